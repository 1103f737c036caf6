defmodule Snakepit.HostAppTest do
  # Snakepit as users get it: a path dependency of another Mix app, whose own
  # priv/python/my_adapter.py is importable with no PYTHONPATH set, both
  # under `mix run` and from a release copied away from any source tree.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 300_000

  @root Path.expand("../..", __DIR__)

  @tag :tmp_dir
  test "a host app runs its own adapter with mix run and from a release", %{tmp_dir: dir} do
    host = Path.join(dir, "host_app")
    write_host_app(host)
    python = Path.join(@root, ".venv/bin/python")
    env = [{"SNAKEPIT_PYTHON", python}, {"MIX_ENV", "dev"}]

    script =
      ~s|:ok = Snakepit.Pool.await_ready(); IO.inspect(Snakepit.execute("triple", %{x: 14}))|

    {out, status} =
      System.cmd("mix", ["run", "-e", script], cd: host, env: env, stderr_to_stdout: true)

    assert status == 0, out
    assert out =~ "{:ok, 42}"
    refute out =~ "Getting", "mix fetched something: there must be nothing to fetch"

    {out, status} =
      System.cmd("mix", ["release", "--overwrite", "--quiet"],
        cd: host,
        env: [{"MIX_ENV", "prod"}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    release = Path.join(dir, "moved_release")
    File.cp_r!(Path.join(host, "_build/prod/rel/host_app"), release)

    eval = """
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready()
    IO.inspect(Snakepit.PythonRuntime.python_path(), label: "path")
    IO.inspect(Snakepit.execute("triple", %{x: 5}), label: "result")
    metas = Registry.select(Snakepit.Pool.Registry, [{{:_, :_, :"$1"}, [], [:"$1"]}])
    IO.puts("workers: " <> Enum.map_join(metas, ",", &Integer.to_string(&1.os_pid)))
    """

    # Started from elsewhere, with nothing telling it where Python is: it
    # runs the interpreter of the project it was built in, and stops its
    # workers when it stops.
    elsewhere = Path.join(dir, "elsewhere")
    File.mkdir_p!(elsewhere)

    {out, status} =
      System.cmd(Path.join(release, "bin/host_app"), ["eval", eval],
        cd: elsewhere,
        env: [{"SNAKEPIT_PYTHON", nil}, {"PYTHONPATH", nil}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "result: {:ok, 15}"
    # The bridge and the adapter come from the release itself.
    assert out =~ Path.join(release, "lib/snakepit-")
    assert out =~ Path.join(release, "lib/host_app-0.1.0/priv/python")

    [workers] = Regex.run(~r/workers: ([\d,]+)/, out, capture: :all_but_first)

    # The guard takes a worker down once the VM is gone (a zombie not yet
    # reaped by init is gone too).
    for os_pid <- String.split(workers, ",") do
      assert Snakepit.Test.AppPool.wait_until(fn -> not alive?(os_pid) end, 10_000) != :timeout,
             "worker #{os_pid} outlived the release"
    end
  end

  defp alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not (stat |> String.split(") ") |> List.last() |> String.starts_with?("Z"))
      {:error, _} -> false
    end
  end

  defp write_host_app(host) do
    File.mkdir_p!(Path.join(host, "priv/python"))
    File.mkdir_p!(Path.join(host, "config"))
    File.mkdir_p!(Path.join(host, "lib"))

    File.write!(Path.join(host, "mix.exs"), """
    defmodule HostApp.MixProject do
      use Mix.Project

      def project do
        [app: :host_app, version: "0.1.0", elixir: "~> 1.18", deps: [{:snakepit, path: #{inspect(@root)}}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(host, "config/config.exs"), """
    import Config
    config :snakepit, pool_size: 1, adapter_args: ["--adapter", "my_adapter.MyAdapter"]
    """)

    File.write!(Path.join(host, "lib/host_app.ex"), "defmodule HostApp do\nend\n")

    File.write!(Path.join(host, "priv/python/my_adapter.py"), """
    from snakepit_bridge import BaseAdapter, tool


    class MyAdapter(BaseAdapter):
        @tool
        def triple(self, x: int) -> int:
            return 3 * x
    """)
  end
end
