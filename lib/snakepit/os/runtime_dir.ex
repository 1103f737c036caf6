defmodule Snakepit.OS.RuntimeDir do
  @moduledoc """
  The per-instance directory (mode 0700) that holds the workers' Unix
  domain sockets, so no other user of the machine can reach them. Made at
  application start and removed at stop.
  """

  @key {__MODULE__, :path}

  @doc "Creates the directory for this VM and remembers it."
  @spec create() :: String.t()
  def create do
    base = Snakepit.Defaults.runtime_dir() || System.tmp_dir!()
    path = Path.join(base, "snakepit-#{System.pid()}-#{Snakepit.RunID.generate()}")
    File.mkdir_p!(path)
    File.chmod!(path, 0o700)
    :persistent_term.put(@key, path)
    path
  end

  @doc "The directory, created on first use."
  @spec path() :: String.t()
  def path do
    case :persistent_term.get(@key, nil) do
      nil -> create()
      path -> path
    end
  end

  @doc "Removes the directory and everything in it."
  @spec remove() :: :ok
  def remove do
    case :persistent_term.get(@key, nil) do
      nil ->
        :ok

      path ->
        File.rm_rf(path)
        :persistent_term.erase(@key)
        :ok
    end
  end

  @doc "The path of one worker's call lane socket."
  @spec lane_path(String.t()) :: String.t()
  def lane_path(worker_id),
    do: Path.join(path(), "#{worker_id}-#{System.unique_integer([:positive])}.lane")

  @doc "The socket address of one worker."
  @spec socket_address(String.t()) :: String.t()
  def socket_address(worker_id) do
    # Socket paths are limited to 107 bytes; worker ids are short, but keep a
    # unique suffix so a restarted worker never meets its predecessor's file.
    "unix:" <> Path.join(path(), "#{worker_id}-#{System.unique_integer([:positive])}.sock")
  end
end
