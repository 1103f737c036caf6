defmodule Snakepit.Error.PythonTranslationTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Error.PythonTranslation

  doctest Snakepit.Serialization

  test "each documented Python type has its struct; subclasses map to their parent's" do
    for {type, module} <- [
          {"ValueError", Error.ValueError},
          {"UnicodeDecodeError", Error.ValueError},
          {"TypeError", Error.TypeError},
          {"KeyError", Error.KeyError},
          {"IndexError", Error.IndexError},
          {"AttributeError", Error.AttributeError},
          {"ImportError", Error.ImportError},
          {"ModuleNotFoundError", Error.ImportError},
          {"FileNotFoundError", Error.FileNotFoundError},
          {"PermissionError", Error.PermissionError},
          {"RuntimeError", Error.RuntimeError},
          {"RecursionError", Error.RuntimeError},
          {"NotImplementedError", Error.NotImplementedError},
          {"ZeroDivisionError", Error.ZeroDivisionError},
          {"OSError", Error.PythonException},
          {"MyCustomError", Error.PythonException}
        ] do
      error = PythonTranslation.translate(type, "msg", "Traceback ...", %{tool: "t"})

      assert %^module{python_type: ^type, message: "msg", python_traceback: "Traceback ..."} =
               error

      assert error.context == %{tool: "t"}
      assert Exception.message(error) == "#{type}: msg"
      assert is_exception(error)
    end
  end

  test "errors of workers: ML families first, then the table" do
    assert %Error.OutOfMemory{requested_bytes: requested} =
             PythonTranslation.from_tool_error(
               "RuntimeError",
               "CUDA out of memory. Tried to allocate 2.00 GiB",
               "tb"
             )

    assert requested == 2 * 1024 * 1024 * 1024

    assert %Error.RuntimeError{context: %{tool: "t"}} =
             PythonTranslation.from_tool_error("RuntimeError", "plain", "tb", %{tool: "t"})

    assert %Error.ValueError{} = PythonTranslation.from_tool_error("ValueError", "bad", nil)
  end

  test "missing type and traceback" do
    assert %Error.PythonException{python_type: "Exception", python_traceback: nil, message: ""} =
             PythonTranslation.translate("", nil, "")
  end

  test "the structs can be raised" do
    assert_raise Error.ValueError, "ValueError: bad", fn ->
      raise PythonTranslation.translate("ValueError", "bad", nil)
    end
  end

  test "the client maps tool errors by kind" do
    worker = %{id: "w1"}
    translate = &Snakepit.Transport.NativeCall.translate({:error, &1}, "tool", worker)

    assert {:error, %Error{category: :validation, details: %{kind: "unknown_tool"}}} =
             translate.({:tool_error, "ToolNotFoundError", "unknown tool", "", "unknown_tool"})

    assert {:error, %Error{category: :validation, details: %{kind: "streaming_tool"}}} =
             translate.(
               {:tool_error, "StreamingToolError", "use execute_stream", "", "streaming_tool"}
             )

    assert {:error, %Error.TypeError{context: %{kind: "invalid_arguments", worker_id: "w1"}}} =
             translate.({:tool_error, "TypeError", "missing 'b'", "tb", "invalid_arguments"})

    assert {:error, %Error.PythonException{python_type: "SerializationError"}} =
             translate.({:tool_error, "SerializationError", "bad args", "tb", "serialization"})
  end

  test "marker helpers" do
    refute Snakepit.Serialization.unserializable?(%{"__ffi_unserializable__" => false})
    refute Snakepit.Serialization.unserializable?([%{"__ffi_unserializable__" => true}])

    assert {:ok, %{type: nil, repr: "r"}} =
             Snakepit.Serialization.unserializable_info(%{
               "__ffi_unserializable__" => true,
               "__type__" => 3,
               "__repr__" => "r"
             })
  end
end
