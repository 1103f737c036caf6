defmodule Snakepit.OS.PlatformTest do
  use ExUnit.Case, async: true

  alias Snakepit.OS.Platform

  test "Linux 5.9 and later are supported; older kernels and other systems say why" do
    assert Platform.check({:unix, :linux}, "5.9.0-1-amd64") == :ok
    assert Platform.check({:unix, :linux}, "6.18.44-fc-v1147") == :ok
    assert Platform.check({:unix, :linux}, "10.0.1") == :ok

    assert {:error, message} = Platform.check({:unix, :linux}, "5.4.0-150-generic")
    assert message =~ "Linux 5.9 or later" and message =~ "5.4"

    assert {:error, message} = Platform.check({:unix, :darwin}, "23.1.0")
    assert message =~ "Linux only" and message =~ "darwin"

    assert {:error, _} = Platform.check({:win32, :nt}, nil)
    assert {:error, message} = Platform.check({:unix, :linux}, "weird")
    assert message =~ "weird"
  end

  test "this machine passes" do
    assert Platform.check() == :ok
  end
end
