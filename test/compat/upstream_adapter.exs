# A Python adapter written for upstream Snakepit (decorators with
# required_variables, handler classes, execute_tool falling back to
# call_tool), served unchanged.
Application.put_env(:snakepit, :pooling_enabled, true)
Application.put_env(:snakepit, :python_path, [System.fetch_env!("SNAKEPIT_COMPAT_FIXTURES")])
Application.put_env(:snakepit, :pool_config, %{pool_size: 1})

Application.put_env(:snakepit, :adapter_args, ["--adapter", "upstream_style.UpstreamStyleAdapter"])

Snakepit.run_as_script(
  fn ->
    {:ok, %{"product" => 42}} = Snakepit.execute("multiply", %{a: 6, b: 7})
    {:ok, %{"text" => "HEY!"}} = Snakepit.execute("shout", %{text: "hey"})
    {:ok, %{"sum" => 3}} = Snakepit.execute("add", %{a: 1, b: 2})

    {:ok, %{"session_id" => "compat-session"}} =
      Snakepit.execute_in_session("compat-session", "whoami", %{})

    {:error, %Snakepit.Error{category: :validation}} = Snakepit.execute("no_such_tool", %{})
    IO.puts("COMPAT OK")
  end,
  exit_mode: :halt
)
