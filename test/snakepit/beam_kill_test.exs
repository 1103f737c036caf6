defmodule Snakepit.BeamKillTest do
  # The guarantee users adopt Snakepit for: however the VM dies, its
  # Python workers die with it.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Native
  alias Snakepit.Test.{AppPool, ExternalBeam}

  test "kill -9 of the BEAM takes every worker down within 1 second" do
    %{os_pid: beam, workers: workers} = ExternalBeam.start!(pool_size: 3)
    assert length(workers) == 3
    assert Enum.all?(workers, &Native.process_alive/1)

    :ok = Native.signal_process(beam, 9)
    elapsed = AppPool.wait_until(fn -> not Enum.any?(workers, &Native.process_alive/1) end, 1_000)

    assert elapsed != :timeout,
           "workers still alive 1 s after kill -9: #{inspect(Enum.filter(workers, &Native.process_alive/1))}"

    IO.puts("\n  [time-to-clean after kill -9 of the BEAM: #{elapsed} ms]")
  end
end
