defmodule Snakepit.OS.Platform do
  @moduledoc """
  The platforms Snakepit runs on, checked when it starts: Linux 5.9 or
  later. The native core needs `pidfd_open` (5.3) to watch workers without
  SIGCHLD, `close_range` (5.9) so the VM's descriptors never leak into
  workers, and sealed memory files (3.17) for zero-copy regions. Elsewhere
  the application refuses to start with a message saying why, rather than
  run with a silent gap.
  """

  @min_kernel {5, 9}

  @doc "`:ok` on a supported platform, else `{:error, message}`."
  @spec check() :: :ok | {:error, String.t()}
  def check, do: check(:os.type(), kernel_release())

  @doc "The check for an OS type (`:os.type/0`) and kernel release string."
  @spec check({atom(), atom()}, String.t() | nil) :: :ok | {:error, String.t()}
  def check({:unix, :linux}, release) do
    case parse(release) do
      {major, minor} when {major, minor} >= @min_kernel ->
        :ok

      {major, minor} ->
        {:error,
         "Snakepit needs Linux #{format(@min_kernel)} or later (pidfd_open, close_range, " <>
           "sealed memory files); this kernel is #{major}.#{minor} (#{release})"}

      nil ->
        {:error, "cannot tell this Linux kernel's version from #{inspect(release)}"}
    end
  end

  def check({family, name}, _release) do
    {:error,
     "Snakepit runs on Linux only (its native core uses pidfd_open, close_range and memfd " <>
       "seals); this is #{family}/#{name}"}
  end

  @doc "The oldest kernel supported, as `{major, minor}`."
  @spec min_kernel() :: {pos_integer(), non_neg_integer()}
  def min_kernel, do: @min_kernel

  defp kernel_release do
    case File.read("/proc/sys/kernel/osrelease") do
      {:ok, text} -> String.trim(text)
      {:error, _} -> nil
    end
  end

  defp parse(nil), do: nil

  defp parse(release) do
    case Regex.run(~r/^(\d+)\.(\d+)/, release) do
      [_, major, minor] -> {String.to_integer(major), String.to_integer(minor)}
      nil -> nil
    end
  end

  defp format({major, minor}), do: "#{major}.#{minor}"
end
