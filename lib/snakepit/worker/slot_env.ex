defmodule Snakepit.Worker.SlotEnv do
  @moduledoc """
  The environment a worker gets for its slot, on top of its pool's
  `adapter_env`: the device of `devices: :per_worker`, then what the pool's
  `worker_env: {m, f, a}` returns for the slot (which wins).

  A pool numbers its worker slots from 0. A worker keeps its slot's index
  for its whole life, and whatever takes its place gets the same index: a
  worker its starter restarts after a crash, a recycled worker's
  replacement, each worker of a rolling restart. A pool that grows gives a
  new worker the lowest index no live worker holds, so a pool of `n`
  workers holds indices `0..n-1` once it is settled.

  `resolve/2` runs in the worker's own process (`Snakepit.GRPCWorker`),
  before its Python process starts, each time it starts: a `worker_env`
  function that raises, or returns something other than string names and
  values, fails that worker's start with a message naming the cause (the
  slot then restarts with backoff as any failed start); the pool process
  never runs it.

  ## Devices

  With `devices: :per_worker`, slot `i` gets device `i rem n` of the `n`
  devices of the machine's accelerator (`Snakepit.Hardware.detect/0`):

    * CUDA: `CUDA_VISIBLE_DEVICES=<id>` and `CUDA_DEVICE_ORDER=PCI_BUS_ID`
      (so the id means the GPU `nvidia-smi` lists under it; CUDA's own
      default order is fastest first). When the VM itself runs with
      `CUDA_VISIBLE_DEVICES` set, slots are spread over that list instead,
      and an existing `CUDA_DEVICE_ORDER` is left alone;
    * ROCm: `HIP_VISIBLE_DEVICES=<id>` (likewise spread over the VM's own
      `HIP_VISIBLE_DEVICES` when set). `CUDA_VISIBLE_DEVICES` is not set
      too: HIP honours both, one after the other, and the second would
      then name a device the first hid;
    * no GPU (a CPU machine, or Apple MPS, a single device every process
      shares): nothing is set, and a warning says so once per pool.

  More workers than devices share them round-robin (slots 0 and 2 of a
  two-GPU machine get GPU 0). During a rolling restart or a recycle the
  replacement starts before the worker it replaces stops, so both hold the
  slot's device for a moment: leave room on the device for a second copy
  of the model, or restart with `rolling: true` at a time of your choosing.
  """

  require Logger

  @type env :: [{String.t(), String.t()}]

  @doc """
  The slot environment of a worker of pool `config` in slot `index`:
  `{:ok, pairs}` or `{:error, message}`. `hardware` is the
  `Snakepit.Hardware.detect/0` map (asked only with `devices:
  :per_worker`), `vm_env` the VM's environment (for the visible-devices
  lists the VM already runs with).
  """
  @spec resolve(map(), non_neg_integer() | nil, keyword()) :: {:ok, env()} | {:error, String.t()}
  def resolve(config, index, opts \\ [])

  def resolve(_config, nil, _opts), do: {:ok, []}

  def resolve(config, index, opts) when is_integer(index) and index >= 0 do
    devices =
      case Map.get(config, :devices) do
        :per_worker ->
          hardware = Keyword.get_lazy(opts, :hardware, &Snakepit.Hardware.detect/0)
          vm_env = Keyword.get_lazy(opts, :vm_env, &System.get_env/0)
          env = device_env(hardware, index, vm_env)
          if env == [], do: warn_no_device(Map.get(config, :name), hardware)
          env

        _ ->
          []
      end

    with {:ok, own} <- call_worker_env(Map.get(config, :worker_env), index) do
      {:ok, merge(devices, own)}
    end
  end

  @doc """
  The device variables of slot `index` on a machine with `hardware`
  (`Snakepit.Hardware.detect/0`'s map), given the VM's environment
  `vm_env`. Pure.

      iex> hardware = %{accelerator: :cuda, cuda: %{devices: [%{id: 0}, %{id: 1}]}, rocm: nil}
      iex> Snakepit.Worker.SlotEnv.device_env(hardware, 3, %{})
      [{"CUDA_VISIBLE_DEVICES", "1"}, {"CUDA_DEVICE_ORDER", "PCI_BUS_ID"}]
      iex> Snakepit.Worker.SlotEnv.device_env(%{accelerator: :cpu, cuda: nil, rocm: nil}, 0, %{})
      []
  """
  @spec device_env(map(), non_neg_integer(), map()) :: env()
  def device_env(hardware, index, vm_env) do
    case devices(hardware, vm_env) do
      {_var, []} ->
        []

      {"CUDA_VISIBLE_DEVICES" = var, ids} ->
        order =
          if Map.has_key?(vm_env, "CUDA_DEVICE_ORDER"),
            do: [],
            else: [{"CUDA_DEVICE_ORDER", "PCI_BUS_ID"}]

        [{var, pick(ids, index)} | order]

      {var, ids} ->
        [{var, pick(ids, index)}]

      nil ->
        []
    end
  end

  defp pick(ids, index), do: Enum.at(ids, rem(index, length(ids)))

  # {variable, ids to spread the slots over}, or nil without a GPU.
  defp devices(%{accelerator: :cuda, cuda: %{devices: found}}, vm_env),
    do: {"CUDA_VISIBLE_DEVICES", visible(vm_env, "CUDA_VISIBLE_DEVICES", found)}

  defp devices(%{accelerator: :rocm, rocm: %{devices: found}}, vm_env),
    do: {"HIP_VISIBLE_DEVICES", visible(vm_env, "HIP_VISIBLE_DEVICES", found)}

  defp devices(_hardware, _vm_env), do: nil

  # The VM's own restriction, when it has one, else every device found.
  defp visible(vm_env, var, found) do
    case vm_env
         |> Map.get(var, "")
         |> String.split(",", trim: true)
         |> Enum.map(&String.trim/1) do
      [] -> Enum.map(found, &to_string(&1.id))
      ids -> Enum.reject(ids, &(&1 == ""))
    end
  end

  defp warn_no_device(pool, hardware) do
    key = {__MODULE__, :warned, pool}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Logger.warning(
        "Snakepit pool #{inspect(pool)}: devices: :per_worker, but no CUDA or ROCm GPU was " <>
          "found (accelerator #{inspect(Map.get(hardware, :accelerator))}); its workers start " <>
          "without a device assignment"
      )
    end
  end

  defp call_worker_env(nil, _index), do: {:ok, []}

  defp call_worker_env({m, f, a} = mfa, index) do
    case apply(m, f, [index | a]) do
      env when is_map(env) or is_list(env) ->
        pairs = Enum.to_list(env)

        if Enum.all?(pairs, &match?({k, v} when is_binary(k) and is_binary(v) and k != "", &1)),
          do: {:ok, pairs},
          else: {:error, "worker_env #{format_mfa(mfa)} must return a map of strings to strings"}

      other ->
        {:error,
         "worker_env #{format_mfa(mfa)} must return a map of strings to strings, got: " <>
           inspect(other, limit: 5, printable_limit: 80)}
    end
  rescue
    exception ->
      {:error, "worker_env #{format_mfa(mfa)} raised: #{Exception.message(exception)}"}
  catch
    kind, reason ->
      {:error, "worker_env #{format_mfa(mfa)} failed: #{inspect({kind, reason}, limit: 5)}"}
  end

  defp format_mfa({m, f, a}), do: "#{inspect(m)}.#{f}/#{length(a) + 1}"

  # Later pairs win.
  defp merge(base, own) do
    Enum.reject(base, fn {k, _} -> List.keymember?(own, k, 0) end) ++ own
  end
end
