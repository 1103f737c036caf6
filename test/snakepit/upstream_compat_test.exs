defmodule Snakepit.UpstreamCompatTest do
  # What code written for upstream Snakepit meets, through real workers:
  # its option names, structs in arguments, numbers JSON cannot hold.
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureLog

  alias Snakepit.Error
  alias Snakepit.Test.{AppPool, ExternalBeam, Money, Opaque, Point}

  setup_all do
    AppPool.start!(
      pools: [
        %{name: :default, pool_size: 1},
        %{name: :second, pool_size: 1, affinity: :strict_fail_fast}
      ]
    )
  end

  describe "call options" do
    test "pool_name: is upstream's pool:" do
      {:ok, %{"pid" => default_pid}} = Snakepit.execute("get_pid", %{})
      {:ok, %{"pid" => second_pid}} = Snakepit.execute("get_pid", %{}, pool_name: :second)
      assert default_pid != second_pid

      assert {:ok, %{"pid" => ^second_pid}} =
               Snakepit.execute_in_session("s-compat", "get_pid", %{}, pool_name: :second)

      assert {:ok, %{"pid" => ^second_pid}} =
               Snakepit.execute("get_pid", %{}, pool_name: :second, pool: :second)
    end

    test "contradicting pool_name: and pool: is a clear error" do
      assert {:error, %Error{category: :validation, message: message}} =
               Snakepit.execute("ping", %{}, pool_name: :second, pool: :default)

      assert message =~ "pool_name: is an alias of pool:"
    end

    test "an unknown option is named in a warning once, and the call still runs" do
      log =
        capture_log(fn ->
          assert {:ok, _} = Snakepit.execute("ping", %{}, retries_please: 3)
          assert {:ok, _} = Snakepit.execute("ping", %{}, retries_please: 3)
        end)

      assert log =~ "unknown call option :retries_please"
      assert length(String.split(log, "retries_please")) - 1 == 1
    end

    test "options that are not a keyword list are refused" do
      assert {:error, %Error{category: :validation}} = Snakepit.execute("ping", %{}, %{pool: 1})
    end
  end

  describe "structs in arguments" do
    test "dates and times arrive as ISO 8601, as upstream sends them" do
      args = %{
        "at" => ~U[2026-12-02 10:00:00.123Z],
        "day" => ~D[2026-01-02],
        "naive" => ~N[2026-01-02 03:04:05],
        "time" => ~T[10:11:12],
        "nested" => [%{"when" => DateTime.from_unix!(0)}]
      }

      assert {:ok, echoed} = Snakepit.execute("echo", args)

      assert echoed == %{
               "at" => "2026-12-02T10:00:00.123Z",
               "day" => "2026-01-02",
               "naive" => "2026-01-02T03:04:05",
               "time" => "10:11:12",
               "nested" => [%{"when" => "1970-01-01T00:00:00Z"}]
             }
    end

    test "user structs go through their JSON.Encoder" do
      args = %{
        "p" => %Point{x: 1, y: 2, secret: "kept out"},
        "m" => %Money{cents: 250, currency: "EUR"}
      }

      assert {:ok, %{"p" => %{"x" => 1, "y" => 2} = p, "m" => "2.5 EUR"}} =
               Snakepit.execute("echo", args)

      refute Map.has_key?(p, "secret")
    end

    test "a struct with no encoding is a :validation error naming it and where it is" do
      assert {:error, %Error{category: :validation, message: message}} =
               Snakepit.execute("echo", %{"list" => [1, %Opaque{handle: make_ref()}]})

      assert message =~ "%Snakepit.Test.Opaque{}" and message =~ ".list[1]"
      assert message =~ "JSON.Encoder"
    end

    test "structs in a stream's arguments" do
      me = self()

      # A tool that does not stream answers as one final chunk.
      :ok = Snakepit.execute_stream("echo", %{"at" => ~D[2026-01-01]}, &send(me, {:chunk, &1}))
      assert_receive {:chunk, %{"at" => "2026-01-01", "is_final" => true}}
    end
  end

  describe "numbers JSON cannot hold" do
    test "integers beyond 64 bits stay integers both ways" do
      big = 2 ** 100

      assert {:ok, %{"v" => ^big, "n" => n}} =
               Snakepit.execute("echo", %{"v" => big, "n" => -(2 ** 70)})

      assert n == -(2 ** 70)
      assert {:ok, %{"result" => sum}} = Snakepit.execute("add", %{"a" => big, "b" => 1})
      assert sum == big + 1
      # The edges of the 64-bit ranges, too.
      assert {:ok, %{"max" => 18_446_744_073_709_551_615, "min" => -9_223_372_036_854_775_808}} =
               Snakepit.execute("echo", %{"max" => 2 ** 64 - 1, "min" => -(2 ** 63)})
    end

    test "non-finite floats are :nan, :infinity and :neg_infinity both ways, never nil" do
      args = %{"nan" => :nan, "inf" => :infinity, "ninf" => :neg_infinity, "none" => nil}
      assert {:ok, echoed} = Snakepit.execute("echo", args)
      assert echoed == args
      # Python really had floats: nan compares unequal to itself there.
      assert {:ok, %{"result" => :infinity}} =
               Snakepit.execute("add", %{"a" => :infinity, "b" => 1})
    end
  end

  describe "upstream-style scripts (test/compat/)" do
    for script <- Path.wildcard(Path.expand("../compat/*.exs", __DIR__)) |> Enum.sort() do
      @script script
      test "#{Path.basename(script)} runs unchanged and logs no error" do
        {output, status} =
          ExternalBeam.run(
            File.read!(@script),
            [{"SNAKEPIT_COMPAT_FIXTURES", AppPool.fixtures_dir()}],
            120_000
          )

        assert status == 0, output
        assert output =~ "COMPAT OK", output
        refute output =~ "[error]", output
      end
    end
  end
end
