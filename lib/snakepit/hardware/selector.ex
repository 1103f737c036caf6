defmodule Snakepit.Hardware.Selector do
  @moduledoc """
  Device selection on top of `Snakepit.Hardware.Detector`.

  Every function takes an optional hardware info map as last argument; by
  default it uses the cached `Snakepit.Hardware.Detector.detect/0`. Passing
  the map makes selection a pure function of it.

  Preferences that are not devices at all (unknown atoms, negative ids,
  strings) raise `ArgumentError`; devices that are valid but absent give
  `{:error, :device_not_available}`.

  ## Telemetry

    * `[:snakepit, :hardware, :select, :start]` - `%{system_time: t}`,
      `%{preference: preference}`
    * `[:snakepit, :hardware, :select, :stop]` - `%{duration: native_time}`,
      `%{device: device | nil, success: boolean}`
  """

  alias Snakepit.Hardware.Detector

  @type device ::
          :cpu
          | :cuda
          | :mps
          | :rocm
          | {:cuda, non_neg_integer()}
          | {:rocm, non_neg_integer()}

  @type device_preference ::
          :auto | :cpu | :cuda | :mps | :rocm | {:cuda, non_neg_integer()}

  @kinds [:auto, :cpu, :cuda, :mps, :rocm]

  @doc """
  Selects a device based on preference.

    * `:auto` - the best available accelerator: `{:cuda, 0}`, then
      `{:rocm, 0}`, then `:mps`, else `:cpu`
    * `:cpu` - always `{:ok, :cpu}`
    * `:cuda` / `:rocm` - the first GPU of that kind, `{:cuda, 0}` / `{:rocm, 0}`
    * `:mps` - `:mps` when MPS is available
    * `{:cuda, id}` / `{:rocm, id}` - that GPU, if it exists

  Returns `{:error, :device_not_available}` when the device is absent.
  """
  @spec select(device_preference() | {:rocm, non_neg_integer()}, Detector.hardware_info() | nil) ::
          {:ok, device()} | {:error, :device_not_available}
  def select(preference, info \\ nil) do
    validate!(preference)
    started = System.monotonic_time()
    emit([:select, :start], %{system_time: System.system_time()}, %{preference: preference})
    result = do_select(preference, info || Detector.detect())

    {device, success} =
      case result do
        {:ok, device} -> {device, true}
        {:error, _} -> {nil, false}
      end

    emit([:select, :stop], %{duration: System.monotonic_time() - started}, %{
      device: device,
      success: success
    })

    result
  end

  @doc """
  Selects the first available device from a preference list.

  Returns `{:error, :no_device}` when none is available (or the list is
  empty).

      iex> info = %{accelerator: :cpu, cpu: %{}, cuda: nil, mps: nil, rocm: nil, platform: "linux-x86_64"}
      iex> Snakepit.Hardware.Selector.select_with_fallback([:cuda, :mps, :cpu], info)
      {:ok, :cpu}
  """
  @spec select_with_fallback([device_preference()], Detector.hardware_info() | nil) ::
          {:ok, device()} | {:error, :no_device}
  def select_with_fallback(preferences, info \\ nil)

  def select_with_fallback(preferences, info) when is_list(preferences) do
    Enum.each(preferences, &validate!/1)

    if preferences == [] do
      {:error, :no_device}
    else
      info = info || Detector.detect()

      Enum.find_value(preferences, {:error, :no_device}, fn preference ->
        case select(preference, info) do
          {:ok, _device} = ok -> ok
          {:error, _} -> nil
        end
      end)
    end
  end

  def select_with_fallback(preferences, _info) do
    raise ArgumentError,
          "select_with_fallback expects a list of device preferences, got: #{inspect(preferences)}"
  end

  @doc """
  Returns information about a device for logging and telemetry.

  Always includes `:type` and `:available`; GPUs add `:device_id`,
  `:name`, memory figures and versions when present; `:cpu` adds the CPU
  fields.
  """
  @spec device_info(device(), Detector.hardware_info() | nil) :: map()
  def device_info(device, info \\ nil) do
    validate_device!(device)
    info = info || Detector.detect()
    do_device_info(device, info)
  end

  # -- selection ------------------------------------------------------------

  defp do_select(:auto, info) do
    cond do
      gpu(info.cuda, 0) -> {:ok, {:cuda, 0}}
      gpu(info.rocm, 0) -> {:ok, {:rocm, 0}}
      Detector.mps_available?(info) -> {:ok, :mps}
      true -> {:ok, :cpu}
    end
  end

  defp do_select(:cpu, _info), do: {:ok, :cpu}
  defp do_select(:cuda, info), do: do_select({:cuda, 0}, info)
  defp do_select(:rocm, info), do: do_select({:rocm, 0}, info)

  defp do_select(:mps, info) do
    if Detector.mps_available?(info), do: {:ok, :mps}, else: unavailable()
  end

  defp do_select({:cuda, id}, info) do
    if gpu(info.cuda, id), do: {:ok, {:cuda, id}}, else: unavailable()
  end

  defp do_select({:rocm, id}, info) do
    if gpu(info.rocm, id), do: {:ok, {:rocm, id}}, else: unavailable()
  end

  defp unavailable, do: {:error, :device_not_available}

  defp gpu(nil, _id), do: nil
  defp gpu(%{devices: devices}, id), do: Enum.find(devices, &(&1.id == id))

  # -- device info ----------------------------------------------------------

  defp do_device_info(:cpu, info) do
    Map.merge(%{type: :cpu, available: true, platform: info.platform}, info.cpu)
  end

  defp do_device_info(:mps, info) do
    case info.mps do
      %{} = mps ->
        %{
          type: :mps,
          available: mps.available,
          name: mps.device_name,
          memory_total_mb: mps.memory_total_mb
        }

      nil ->
        %{type: :mps, available: false}
    end
  end

  defp do_device_info(:cuda, info), do: do_device_info({:cuda, 0}, info)
  defp do_device_info(:rocm, info), do: do_device_info({:rocm, 0}, info)

  defp do_device_info({kind, id}, info) do
    source = Map.fetch!(info, kind)

    case gpu(source, id) do
      nil ->
        %{type: kind, device_id: id, available: false}

      device ->
        versions =
          case kind do
            :cuda ->
              %{
                cuda_version: source.version,
                driver_version: source.driver_version,
                cudnn_version: source.cudnn_version
              }

            :rocm ->
              %{rocm_version: source.version}
          end

        device
        |> Map.delete(:id)
        |> Map.merge(versions)
        |> Map.merge(%{type: kind, device_id: id, available: true})
    end
  end

  # -- validation -----------------------------------------------------------

  defp validate!(preference) when preference in @kinds, do: :ok
  defp validate!({kind, id}) when kind in [:cuda, :rocm] and is_integer(id) and id >= 0, do: :ok

  defp validate!(other) do
    raise ArgumentError,
          "unknown device preference #{inspect(other)}; expected one of " <>
            "#{inspect(@kinds)}, {:cuda, id} or {:rocm, id} with a non-negative integer id"
  end

  defp validate_device!(:auto),
    do: raise(ArgumentError, "device_info/1 needs a device, not :auto; call select/1 first")

  defp validate_device!(device), do: validate!(device)

  defp emit(suffix, measurements, metadata) do
    Snakepit.Telemetry.emit([:snakepit, :hardware | suffix], measurements, metadata)
  end
end
