defmodule Snakepit.Hardware.CUDADetector do
  @moduledoc """
  CUDA GPU hardware detection.

  Asks `nvidia-smi` for the GPUs (`--query-gpu=index,name,memory.total,
  memory.free,driver_version,compute_cap --format=csv,noheader,nounits`,
  retrying without `compute_cap` on drivers that do not know that field)
  and reads the CUDA version from its banner. When `nvidia-smi` is missing
  or fails, GPUs listed under `/proc/driver/nvidia/gpus` are reported
  instead (memory unknown, so 0). The cuDNN version comes from the
  `CUDNN_MAJOR`/`CUDNN_MINOR`/`CUDNN_PATCHLEVEL` defines of the installed
  headers.

  A probe that is missing, fails, hangs past the timeout or prints
  something unparseable means "no CUDA": `detect/1` returns `nil`, never
  raises.

  ## Options (for `detect/1`)

    * `:nvidia_smi` - runner: a function taking the argument list and
      returning `{:ok, output}` or `{:error, reason}` (default: runs
      `nvidia-smi` from `PATH`)
    * `:proc_driver_dir` - default `"/proc/driver/nvidia"`
    * `:cudnn_header_paths` - cuDNN headers to look at, first match wins
    * `:cuda_version_paths` - CUDA toolkit version files (`version.json` or
      `version.txt`), used when the banner has no CUDA version
    * `:probe_timeout_ms` - bound on each command (default 2000)
  """

  alias Snakepit.Hardware.Probe

  @type cuda_device :: %{
          id: non_neg_integer(),
          name: String.t(),
          memory_total_mb: non_neg_integer(),
          memory_free_mb: non_neg_integer(),
          compute_capability: String.t() | nil
        }

  @type cuda_info :: %{
          version: String.t(),
          driver_version: String.t(),
          devices: [cuda_device()],
          cudnn_version: String.t() | nil
        }

  @fields_with_cc "index,name,memory.total,memory.free,driver_version,compute_cap"
  @fields "index,name,memory.total,memory.free,driver_version"
  @format "--format=csv,noheader,nounits"

  @cudnn_headers [
    "/usr/include/cudnn_version.h",
    "/usr/local/cuda/include/cudnn_version.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v9.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v8.h",
    "/usr/include/aarch64-linux-gnu/cudnn_version_v9.h",
    "/usr/include/aarch64-linux-gnu/cudnn_version_v8.h",
    "/usr/include/cudnn.h",
    "/usr/local/cuda/include/cudnn.h"
  ]

  @cuda_version_files ["/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"]

  @doc """
  Detects CUDA GPU information.

  Returns `nil` when no CUDA GPU is found, or a map with `:version` (CUDA
  version, `"unknown"` when it cannot be read), `:driver_version`,
  `:devices` and `:cudnn_version` (`nil` when cuDNN is not found).
  """
  @spec detect(keyword()) :: cuda_info() | nil
  def detect(opts \\ []) do
    runner = Probe.runner(opts, :nvidia_smi, "nvidia-smi")
    timeout = Probe.timeout(opts)
    proc_dir = Probe.path_option(opts, :proc_driver_dir, "/proc/driver/nvidia")
    # Validate every option up front, even those only used when a GPU is found.
    opts =
      opts
      |> Keyword.put(
        :cudnn_header_paths,
        Probe.paths_option(opts, :cudnn_header_paths, @cudnn_headers)
      )
      |> Keyword.put(
        :cuda_version_paths,
        Probe.paths_option(opts, :cuda_version_paths, @cuda_version_files)
      )

    case smi_devices(runner, timeout) do
      {[_ | _] = devices, driver} ->
        %{
          version: cuda_version(runner, timeout, opts),
          driver_version: driver || proc_driver_version(proc_dir) || "unknown",
          devices: devices,
          cudnn_version: cudnn_version(opts)
        }

      _none ->
        case proc_devices(proc_dir) do
          [] ->
            nil

          devices ->
            %{
              version: cuda_version(runner, timeout, opts),
              driver_version: proc_driver_version(proc_dir) || "unknown",
              devices: devices,
              cudnn_version: cudnn_version(opts)
            }
        end
    end
  end

  @doc false
  # Parses `--query-gpu` CSV output (noheader, nounits). Lines that do not
  # look like a GPU row are skipped.
  @spec parse_query_output(String.t()) :: {[cuda_device()], String.t() | nil}
  def parse_query_output(output) do
    rows =
      output
      |> String.split("\n", trim: true)
      |> Enum.flat_map(fn line ->
        case line |> String.split(",") |> Enum.map(&String.trim/1) do
          [index, name, total, free, driver | rest] when length(rest) <= 1 ->
            with {id, ""} <- Integer.parse(index),
                 true <- name != "" do
              device = %{
                id: id,
                name: name,
                memory_total_mb: mib(total),
                memory_free_mb: mib(free),
                compute_capability: compute_capability(rest)
              }

              [{device, version_or_nil(driver)}]
            else
              _ -> []
            end

          _ ->
            []
        end
      end)

    devices = rows |> Enum.map(&elem(&1, 0)) |> Enum.sort_by(& &1.id)
    driver = Enum.find_value(rows, &elem(&1, 1))
    {devices, driver}
  end

  @doc false
  # The CUDA version printed in the nvidia-smi banner, e.g. "CUDA Version: 12.2".
  @spec parse_banner_cuda_version(String.t()) :: String.t() | nil
  def parse_banner_cuda_version(output) do
    case Regex.run(~r/CUDA Version\s*:\s*([\d.]+)/, output, capture: :all_but_first) do
      [version] -> version
      nil -> nil
    end
  end

  @doc false
  @spec parse_cudnn_header(String.t()) :: String.t() | nil
  def parse_cudnn_header(text) do
    parts =
      for name <- ["CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL"] do
        case Regex.run(~r/^#define\s+#{name}\s+(\d+)/m, text, capture: :all_but_first) do
          [n] -> n
          nil -> nil
        end
      end

    if Enum.all?(parts), do: Enum.join(parts, ".")
  end

  defp smi_devices(runner, timeout) do
    case Probe.run(runner, ["--query-gpu=#{@fields_with_cc}", @format], timeout) do
      {:ok, output} ->
        parse_query_output(output)

      {:error, {:exit_status, _status, output}} when is_binary(output) ->
        # Drivers older than ~510 do not know compute_cap.
        if output =~ "compute_cap" or output =~ "not a valid field" do
          case Probe.run(runner, ["--query-gpu=#{@fields}", @format], timeout) do
            {:ok, output} -> parse_query_output(output)
            {:error, _} -> {[], nil}
          end
        else
          {[], nil}
        end

      {:error, _} ->
        {[], nil}
    end
  end

  defp cuda_version(runner, timeout, opts) do
    banner =
      case Probe.run(runner, [], timeout) do
        {:ok, output} -> parse_banner_cuda_version(output)
        {:error, _} -> nil
      end

    banner || toolkit_version(Probe.paths_option(opts, :cuda_version_paths, @cuda_version_files)) ||
      "unknown"
  end

  defp toolkit_version(paths) do
    Enum.find_value(paths, fn path ->
      with {:ok, text} <- Probe.read(path) do
        json_version(text) ||
          case Regex.run(~r/CUDA Version\s+([\d.]+)/, text, capture: :all_but_first) do
            [version] -> version
            nil -> nil
          end
      else
        _ -> nil
      end
    end)
  end

  defp json_version(text) do
    case JSON.decode(text) do
      {:ok, %{"cuda" => %{"version" => version}}} when is_binary(version) -> version
      _ -> nil
    end
  end

  defp cudnn_version(opts) do
    opts
    |> Probe.paths_option(:cudnn_header_paths, @cudnn_headers)
    |> Enum.find_value(fn path ->
      case Probe.read(path) do
        {:ok, text} -> parse_cudnn_header(text)
        {:error, _} -> nil
      end
    end)
  end

  defp proc_driver_version(dir) do
    with {:ok, text} <- Probe.read(Path.join(dir, "version")),
         [version] <-
           Regex.run(~r/Kernel Module[^\d]*?\s(\d+\.\d+(?:\.\d+)?)/, text,
             capture: :all_but_first
           ) do
      version
    else
      _ -> nil
    end
  end

  defp proc_devices(dir) do
    gpus_dir = Path.join(dir, "gpus")

    case File.ls(gpus_dir) do
      {:ok, entries} ->
        entries
        |> Enum.sort()
        |> Enum.flat_map(fn entry ->
          case Probe.read(Path.join([gpus_dir, entry, "information"])) do
            {:ok, text} -> proc_device(text)
            {:error, _} -> []
          end
        end)
        |> Enum.sort_by(& &1.id)

      {:error, _} ->
        []
    end
  end

  defp proc_device(text) do
    model = Regex.run(~r/^Model:\s*(.+)$/m, text, capture: :all_but_first)
    minor = Regex.run(~r/^Device Minor:\s*(\d+)/m, text, capture: :all_but_first)

    case {model, minor} do
      {[name], [id]} ->
        [
          %{
            id: String.to_integer(id),
            name: String.trim(name),
            memory_total_mb: 0,
            memory_free_mb: 0,
            compute_capability: nil
          }
        ]

      _ ->
        []
    end
  end

  defp mib(value) do
    case Integer.parse(value) do
      {n, _} when n >= 0 -> n
      _ -> 0
    end
  end

  defp compute_capability([cc]) do
    if cc =~ ~r/^\d+\.\d+$/, do: cc
  end

  defp compute_capability([]), do: nil

  defp version_or_nil(text) do
    if text =~ ~r/^\d+(\.\d+)*$/, do: text
  end
end
