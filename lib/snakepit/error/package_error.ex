defmodule Snakepit.PackageError do
  @moduledoc """
  Structured error for Python package installation and inspection.

  `type` says what went wrong:

    * `:not_installed` - required packages are missing
    * `:install_failed` - the installer ran and failed (`output` holds its output)
    * `:version_mismatch` - a package is installed at a version that does not
      satisfy the requirement
    * `:invalid_requirement` - a requirement string could not be understood

  `packages` lists the requirement strings concerned; `suggestion` is a
  human-readable next step, when there is one.

      raise Snakepit.PackageError, type: :not_installed, packages: ["numpy~=1.26"]
  """

  @type type :: :not_installed | :install_failed | :version_mismatch | :invalid_requirement

  @type t :: %__MODULE__{
          message: String.t(),
          output: String.t() | nil,
          packages: [String.t()],
          suggestion: String.t() | nil,
          type: type()
        }

  @types [:not_installed, :install_failed, :version_mismatch, :invalid_requirement]

  defexception [:message, :type, output: nil, packages: [], suggestion: nil]

  @impl true
  def exception(fields) do
    error = struct!(__MODULE__, fields)

    unless error.type in @types do
      raise ArgumentError,
            "invalid :type for Snakepit.PackageError: #{inspect(error.type)}, " <>
              "expected one of #{inspect(@types)}"
    end

    unless is_list(error.packages) and Enum.all?(error.packages, &is_binary/1) do
      raise ArgumentError,
            ":packages for Snakepit.PackageError must be a list of strings, " <>
              "got: #{inspect(error.packages)}"
    end

    if error.message, do: error, else: %{error | message: default_message(error)}
  end

  defp default_message(%__MODULE__{type: type, packages: packages}) do
    list = if packages == [], do: "", else: ": " <> Enum.join(packages, ", ")

    case type do
      :not_installed -> "Python packages not installed" <> list
      :install_failed -> "Python package installation failed" <> list
      :version_mismatch -> "Installed Python package versions do not match" <> list
      :invalid_requirement -> "Invalid Python package requirement" <> list
    end
  end
end
