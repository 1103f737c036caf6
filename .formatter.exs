[
  inputs: ["{mix,.formatter,mix_native}.exs", "{config,lib,test,bench,examples}/**/*.{ex,exs}"]
]
