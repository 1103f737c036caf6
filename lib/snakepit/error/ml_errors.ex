defmodule Snakepit.Error.MLErrors do
  @moduledoc """
  Recognises the three families of ML errors in a Python exception's class
  and message (out of memory, tensors on different devices, shape
  mismatches) and builds their structs (`Snakepit.Error.OutOfMemory`,
  `Snakepit.Error.DeviceMismatch`, `Snakepit.Error.ShapeMismatch`). Used by
  `Snakepit.Error.Parser` and `Snakepit.Error.PythonTranslation`; never
  creates atoms from Python data.
  """

  alias Snakepit.Error.{Device, Shape}

  @oom_types ~w(MemoryError OutOfMemoryError torch.OutOfMemoryError torch.cuda.OutOfMemoryError)

  @doc """
  The ML error `type` and `message` describe, with the message prefixed by
  the type, or `nil` when they describe none.
  """
  @spec detect(String.t(), String.t()) :: Exception.t() | nil
  def detect(type, message) do
    full = if type == "", do: message, else: "#{type}: #{message}"

    case detect_oom(type, message) || detect_device(message) || detect_shape(message) do
      nil -> nil
      error -> %{error | message: full}
    end
  end

  @doc "A shape from its text form (see `Snakepit.Error.Parser.extract_shape/1`)."
  @spec extract_shape(String.t() | term()) :: [integer()] | nil
  def extract_shape(str) when is_binary(str) do
    cond do
      match = Regex.run(~r/^\s*(\d+(?:\s*x\s*\d+)+)\s*$/, str, capture: :all_but_first) ->
        match |> hd() |> String.split("x") |> Enum.map(&(&1 |> String.trim() |> to_int()))

      match = Regex.run(~r/[\[(]\s*(-?\d+(?:\s*,\s*-?\d+)*)?\s*,?\s*[\])]/, str) ->
        case match do
          [_whole] ->
            []

          [_whole, ""] ->
            []

          [_whole, dims] ->
            dims |> String.split(",") |> Enum.map(&(&1 |> String.trim() |> to_int()))
        end

      true ->
        nil
    end
  end

  def extract_shape(_other), do: nil

  @size ~S"([\d.]+)\s*(bytes|B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)"

  defp detect_oom(type, message) do
    oom? =
      type in @oom_types or
        String.ends_with?(type, "MemoryError") or
        Regex.match?(
          ~r/out of memory|not enough memory|RESOURCE_EXHAUSTED|OOM when allocating|Unable to allocate/i,
          message
        )

    if oom? do
      device = oom_device(type, message)
      requested = capture_bytes(~r/(?:tried to )?allocate\s+#{@size}/i, message)

      available =
        capture_bytes(~r/of which\s+#{@size}\s+is free/i, message) ||
          capture_bytes(~r/#{@size}\s+free/i, message) || 0

      Device.out_of_memory(device, requested || 0, available)
    end
  end

  defp oom_device(type, message) do
    cond do
      Regex.match?(~r/\bMPS\b/, message) ->
        :mps

      Regex.match?(~r/\bHIP\b|ROCm/, message) ->
        {:rocm, gpu_index(message)}

      Regex.match?(~r/CUDA|\bGPU\b|cuda:/i, message) ->
        {:cuda, gpu_index(message)}

      type in ["torch.cuda.OutOfMemoryError", "OutOfMemoryError", "torch.OutOfMemoryError"] ->
        {:cuda, 0}

      true ->
        :cpu
    end
  end

  defp gpu_index(message) do
    case Regex.run(~r/(?:GPU\s+|GPU:|cuda:|hip:)(\d+)/i, message, capture: :all_but_first) do
      [id] -> to_int(id)
      nil -> 0
    end
  end

  @device_re ~S"(cuda(?::\d+)?|hip(?::\d+)?|mps(?::\d+)?|cpu|meta)"

  # Device-mismatch messages, {regex, which captures are (expected, got)}.
  # The formats, with the library versions that write them, are listed in
  # test/snakepit/error/ml_error_formats_test.exs.
  @mismatches [
    # torch: "...same device, but found at least two devices, cuda:0 and cpu!"
    # and the shorter "...same device, but found cuda:0 and cpu!"
    {~r/same device, but found (?:at least two devices,\s*)?#{@device_re} and #{@device_re}/i,
     :in_order},
    # torch 2.x: "...same device, but got mat2 is on cpu, different from other
    # tensors on cuda:0 (when checking argument in method wrapper_CUDA_mm)"
    {~r/is on #{@device_re}, different from other tensors on #{@device_re}/i, :reversed},
    # torch 1.x: "Expected object of device type cuda but got device type cpu"
    {~r/device type (\w+) but got device type (\w+)/i, :in_order},
    # torch: "Tensor for argument #2 'mat1' is on CPU, but expected it to be on GPU"
    {~r/is on (CPU|GPU), but expected (?:it )?to be on (CPU|GPU)/i, :reversed},
    # torch conv: "Input type (torch.cuda.FloatTensor) and weight type
    # (torch.FloatTensor) should be the same": the weights' device is expected
    # ("cuda." or nothing: a group that must take part, or run/3 drops it)
    {~r/Input type \(torch\.(cuda\.|)\w+\) and weight type \(torch\.(cuda\.|)\w+\)/,
     :torch_types},
    # torch cudnn: "...to have the same device as tensor for argument #2
    # 'weight'; but device 0 does not equal 1"
    {~r/same device as tensor for argument.*?but device (\d+) does not equal (\d+)/i, :ordinals},
    # JAX: "Received incompatible devices for jitted computation. Got argument
    # x ... on platform GPU and argument y ... on platform CPU"
    {~r/incompatible devices.*?on platform (\w+).*?on platform (\w+)/is, :in_order}
  ]

  defp detect_device(message) do
    case Enum.find_value(@mismatches, &mismatch(&1, message)) do
      {expected, got} -> Device.device_mismatch(expected, got, "tensor operation")
      nil -> detect_unavailable(message)
    end
  end

  defp mismatch({regex, order}, message) do
    case Regex.run(regex, message, capture: :all_but_first) do
      [a, b] -> devices(order, a, b)
      _ -> nil
    end
  end

  defp devices(:in_order, a, b), do: {parse_device(a), parse_device(b)}
  defp devices(:reversed, a, b), do: {parse_device(b), parse_device(a)}
  defp devices(:ordinals, got, expected), do: {{:cuda, to_int(expected)}, {:cuda, to_int(got)}}

  defp devices(:torch_types, input, weight) do
    device = fn cuda -> if cuda == "", do: :cpu, else: {:cuda, 0} end
    {device.(weight), device.(input)}
  end

  defp detect_unavailable(message) do
    cond do
      Regex.match?(
        ~r/invalid device ordinal|no CUDA GPUs are available|not compiled with CUDA|found no NVIDIA driver|CUDA driver initialization failed/i,
        message
      ) ->
        Device.device_unavailable({:cuda, gpu_index(message)}, "tensor operation")

      Regex.match?(~r/MPS backend is not available|MPS (?:is )?not available/i, message) ->
        Device.device_unavailable(:mps, "tensor operation")

      # TensorFlow: "Could not satisfy explicit device specification
      # '/device:GPU:1' because no devices matching that specification are
      # registered in this process"
      match =
          Regex.run(~r/explicit device specification '[^']*GPU:(\d+)'/i, message,
            capture: :all_but_first
          ) ->
        Device.device_unavailable({:cuda, to_int(hd(match))}, "tensor operation")

      true ->
        nil
    end
  end

  defp parse_device(text) do
    case String.split(String.downcase(text), ":") do
      ["cuda"] -> {:cuda, 0}
      ["gpu"] -> {:cuda, 0}
      ["cuda", id] -> {:cuda, to_int(id)}
      ["hip"] -> {:rocm, 0}
      ["hip", id] -> {:rocm, to_int(id)}
      ["mps" | _] -> :mps
      _ -> :cpu
    end
  end

  defp detect_shape(message) do
    cond do
      match =
          Regex.run(~r/shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)/, message,
            capture: :all_but_first
          ) ->
        # (AxB and CxD): the inner sizes B and C must agree, so the second
        # operand was expected to be [B, D].
        [_rows1, cols1, rows2, cols2] = Enum.map(match, &to_int/1)
        Shape.shape_mismatch([cols1, cols2], [rows2, cols2], "matmul")

      match =
          Regex.run(
            ~r/shapes (\([^)]*\)) and (\([^)]*\)) not aligned: (\d+) \(dim (\d+)\) != (\d+) \(dim (\d+)\)/,
            message,
            capture: :all_but_first
          ) ->
        [s1, s2, d1, _dim1, d2, dim2] = match

        Shape.build(
          expected: extract_shape(s1),
          got: extract_shape(s2),
          dimension: to_int(dim2),
          expected_dim: to_int(d1),
          got_dim: to_int(d2),
          operation: "dot"
        )

      match =
          Regex.run(
            ~r/could not be broadcast together with shapes (\([^)]*\))\s*(\([^)]*\))/,
            message,
            capture: :all_but_first
          ) ->
        [s1, s2] = match
        Shape.broadcast_error(extract_shape(s1), extract_shape(s2), "broadcast")

      match =
          Regex.run(
            ~r/size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton dimension (\d+)/,
            message,
            capture: :all_but_first
          ) ->
        [a, b, dim] = Enum.map(match, &to_int/1)
        Shape.dimension_mismatch(dim, a, b, "elementwise")

      Regex.match?(~r/shape/i, message) ->
        case Regex.scan(
               ~r/(?:torch\.Size\()?[\[(]\s*-?\d+(?:\s*,\s*-?\d+)*\s*,?\s*[\])]\)?/,
               message
             ) do
          [[first], [second] | _] ->
            Shape.shape_mismatch(extract_shape(first), extract_shape(second), "tensor operation")

          _ ->
            nil
        end

      true ->
        nil
    end
  end

  # -- input helpers --------------------------------------------------------

  # Keys are looked up both as strings and as atoms; the atoms are literals
  # of this module, never built from the data.

  defp to_int(text) do
    {int, _rest} = Integer.parse(text)
    int
  end

  defp capture_bytes(regex, message) do
    case Regex.run(regex, message, capture: :all_but_first) do
      [number, unit] -> to_bytes(number, unit)
      _ -> nil
    end
  end

  defp to_bytes(number, unit) do
    value =
      case Float.parse(number) do
        {float, _} -> float
        :error -> 0.0
      end

    multiplier =
      case String.downcase(unit) do
        u when u in ["b", "bytes"] -> 1
        u when u in ["kib", "kb"] -> 1024
        u when u in ["mib", "mb"] -> 1024 * 1024
        u when u in ["gib", "gb"] -> 1024 * 1024 * 1024
        u when u in ["tib", "tb"] -> 1024 * 1024 * 1024 * 1024
      end

    round(value * multiplier)
  end
end
