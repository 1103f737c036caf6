defmodule Snakepit.Hardware.ROCmDetector do
  @moduledoc """
  AMD ROCm GPU hardware detection.

  Runs `rocm-smi --showproductname --showmeminfo vram --json` and reads the
  ROCm version from `/opt/rocm/.info/version`. Field names inside the JSON
  differ between ROCm releases ("Card series" / "Card Series" / "Device
  Name"); the detector accepts the known spellings. Text printed before
  the JSON (rocm-smi prints warnings there) is skipped.

  A missing, failing, hanging or garbled probe means "no ROCm": `detect/1`
  returns `nil`, never raises.

  ## Options (for `detect/1`)

    * `:rocm_smi` - runner: a function taking the argument list and
      returning `{:ok, output}` or `{:error, reason}` (default: runs
      `rocm-smi` from `PATH`)
    * `:rocm_version_paths` - files holding the ROCm version
      (default `["/opt/rocm/.info/version"]`)
    * `:probe_timeout_ms` - bound on the command (default 2000)
  """

  alias Snakepit.Hardware.Probe

  @type rocm_device :: %{
          id: non_neg_integer(),
          name: String.t(),
          memory_total_mb: non_neg_integer(),
          memory_free_mb: non_neg_integer()
        }

  @type rocm_info :: %{version: String.t(), devices: [rocm_device()]}

  @args ["--showproductname", "--showmeminfo", "vram", "--json"]
  @name_keys ["Card series", "Card Series", "Device Name", "Card SKU", "Card model", "Card Model"]
  @mib 1024 * 1024

  @doc """
  Detects ROCm GPU information.

  Returns `nil` when no ROCm GPU is found, or a map with `:version` (ROCm
  version, `"unknown"` when it cannot be read) and `:devices`.
  """
  @spec detect(keyword()) :: rocm_info() | nil
  def detect(opts \\ []) do
    runner = Probe.runner(opts, :rocm_smi, "rocm-smi")
    paths = Probe.paths_option(opts, :rocm_version_paths, ["/opt/rocm/.info/version"])

    with {:ok, output} <- Probe.run(runner, @args, Probe.timeout(opts)),
         [_ | _] = devices <- parse_smi_json(output) do
      %{version: rocm_version(paths), devices: devices}
    else
      _ -> nil
    end
  end

  @doc false
  @spec parse_smi_json(String.t()) :: [rocm_device()]
  def parse_smi_json(output) do
    with {start, _} <- :binary.match(output, "{"),
         json = binary_part(output, start, byte_size(output) - start),
         {:ok, %{} = cards} <- JSON.decode(json) do
      cards
      |> Enum.flat_map(fn {key, value} ->
        with [id] <- Regex.run(~r/^card:?(\d+)$/, key, capture: :all_but_first),
             %{} <- value do
          [device(String.to_integer(id), value)]
        else
          _ -> []
        end
      end)
      |> Enum.sort_by(& &1.id)
    else
      _ -> []
    end
  end

  defp device(id, fields) do
    total = bytes(fields["VRAM Total Memory (B)"])
    used = bytes(fields["VRAM Total Used Memory (B)"])

    name =
      Enum.find_value(@name_keys, "AMD GPU", fn key ->
        case fields[key] do
          value when is_binary(value) and value != "" -> value
          _ -> nil
        end
      end)

    %{
      id: id,
      name: name,
      memory_total_mb: div(total, @mib),
      memory_free_mb: div(max(total - used, 0), @mib)
    }
  end

  defp bytes(value) when is_integer(value) and value >= 0, do: value

  defp bytes(value) when is_binary(value) do
    case Integer.parse(String.trim(value)) do
      {n, _} when n >= 0 -> n
      _ -> 0
    end
  end

  defp bytes(_value), do: 0

  defp rocm_version(paths) do
    Enum.find_value(paths, "unknown", fn path ->
      with {:ok, text} <- Probe.read(path),
           [version] <- Regex.run(~r/^\s*(\d+\.\d+(?:\.\d+)?)/, text, capture: :all_but_first) do
        version
      else
        _ -> nil
      end
    end)
  end
end
