defmodule Snakepit.Test.MemoryCgroup do
  @moduledoc """
  A child memory cgroup with a small limit, to let the kernel's OOM killer
  kill a real worker. Needs a writable memory controller (cgroup v1 or
  v2, usually root); `available?/0` says whether this machine has one.
  """

  @doc "The directory of this VM's own memory cgroup, or nil."
  def own_dir do
    with {:ok, text} <- File.read("/proc/self/cgroup") do
      lines = String.split(text, "\n", trim: true)

      v1 = Enum.find_value(lines, &match_v1/1)
      v2 = Enum.find_value(lines, &match_v2/1)

      cond do
        v1 && File.dir?(v1) -> {:v1, v1}
        v2 && File.exists?(Path.join(v2, "memory.max")) -> {:v2, v2}
        true -> nil
      end
    else
      _ -> nil
    end
  end

  defp match_v1(line) do
    case String.split(line, ":", parts: 3) do
      [_, controllers, path] ->
        if "memory" in String.split(controllers, ","),
          do: Path.join("/sys/fs/cgroup/memory", path)

      _ ->
        nil
    end
  end

  defp match_v2(line) do
    case String.split(line, ":", parts: 3) do
      ["0", "", path] -> Path.join("/sys/fs/cgroup", path)
      _ -> nil
    end
  end

  @doc "Can a child cgroup be made and limited here?"
  def available? do
    case create(64) do
      {:ok, cg} ->
        remove(cg)
        true

      _ ->
        false
    end
  end

  @doc "Creates a child cgroup limited to `mb` MB."
  def create(mb) do
    with {kind, dir} <- own_dir() || :none,
         child = Path.join(dir, "snakepit-oom-#{System.unique_integer([:positive])}"),
         :ok <- File.mkdir(child),
         :ok <- limit(kind, child, mb) do
      {:ok, {kind, child}}
    else
      _ -> :error
    end
  end

  defp limit(:v1, child, mb), do: File.write(Path.join(child, "memory.limit_in_bytes"), "#{mb}M")
  defp limit(:v2, child, mb), do: File.write(Path.join(child, "memory.max"), "#{mb}M")

  @doc "Moves OS process `pid` into the cgroup."
  def add({_kind, child}, pid), do: File.write(Path.join(child, "cgroup.procs"), "#{pid}")

  @doc "Removes the cgroup (it must be empty)."
  def remove({_kind, child}), do: File.rmdir(child)
end
