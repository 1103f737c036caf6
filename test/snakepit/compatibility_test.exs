defmodule Snakepit.CompatibilityTest do
  use ExUnit.Case, async: true

  alias Snakepit.Compatibility

  doctest Compatibility

  test "documented safe and unsafe libraries" do
    for lib <- ~w(numpy torch tensorflow scikit-learn xgboost transformers requests polars) do
      assert %{thread_safe: true} = Compatibility.get_library_info(lib), lib
    end

    for lib <- ~w(pandas matplotlib sqlite3) do
      assert %{thread_safe: false} = Compatibility.get_library_info(lib), lib
    end

    assert length(Compatibility.list_all(:all)) >= 20
  end

  test "names: atoms, case, aliases, underscores" do
    info = Compatibility.get_library_info("scikit-learn")
    assert Compatibility.get_library_info(:sklearn) == info
    assert Compatibility.get_library_info("SKLearn") == info
    assert Compatibility.get_library_info(:scikit_learn) == info
    assert Compatibility.get_library_info("PyTorch") == Compatibility.get_library_info("torch")
    assert Compatibility.get_library_info("cv2") == Compatibility.get_library_info("opencv")
  end

  test "check/2" do
    assert {:ok, _} = Compatibility.check("numpy", :thread)
    assert {:warning, msg} = Compatibility.check(:sqlalchemy, :thread)
    assert msg =~ "Session"
    assert {:error, msg} = Compatibility.check("pandas", :thread)
    assert msg =~ "not thread-safe"
    assert {:warning, msg} = Compatibility.check("some_unknown_lib", :thread)
    assert msg =~ "not in the compatibility matrix"

    for lib <- ["pandas", "numpy", "unknown"] do
      assert {:ok, _} = Compatibility.check(lib, :process)
    end

    assert_raise ArgumentError, ~r/profile/, fn -> Compatibility.check("numpy", :threads) end
  end

  test "generate_report/2" do
    assert {:ok, report} =
             Compatibility.generate_report(
               ["numpy", :sklearn, "pandas", "pillow", "mystery"],
               :thread
             )

    assert %{
             profile: :thread,
             compatible: ["numpy", "scikit-learn"],
             incompatible: ["pandas"],
             warnings: ["pillow", "mystery"],
             unknown: ["mystery"],
             recommendation: :process
           } = report

    assert Enum.map(report.results, & &1.library) == [
             "numpy",
             "scikit-learn",
             "pandas",
             "pillow",
             "mystery"
           ]

    assert {:ok, %{recommendation: :thread, incompatible: []}} =
             Compatibility.generate_report(["torch"], :thread)

    assert {:ok, %{recommendation: :process, compatible: ["pandas"]}} =
             Compatibility.generate_report(["pandas"], :process)

    assert {:ok, %{results: []}} = Compatibility.generate_report([], :thread)
  end

  test "generate_report/2 returns errors for bad input" do
    assert {:error, %Snakepit.Error{category: :validation, details: %{field: :profile}}} =
             Compatibility.generate_report(["numpy"], :fast)

    assert {:error, %Snakepit.Error{category: :validation, details: %{field: :libraries}}} =
             Compatibility.generate_report("numpy", :thread)

    assert {:error, %Snakepit.Error{}} = Compatibility.generate_report([1, 2], :thread)
  end

  test "list_all/1 partitions the matrix" do
    all = Compatibility.list_all(:all)

    parts =
      Compatibility.list_all(:thread_safe) ++
        Compatibility.list_all(:thread_unsafe) ++ Compatibility.list_all(:conditional)

    assert Enum.sort(parts) == all
    assert all == Enum.uniq(all)
    assert_raise ArgumentError, fn -> Compatibility.list_all(:safe) end
  end
end
