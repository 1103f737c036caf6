defmodule Snakepit.Compatibility do
  @moduledoc """
  Thread-safety compatibility matrix for common Python libraries.

  The process profile runs one interpreter per worker, so every library is
  fine there. The thread profile runs many requests concurrently in one
  interpreter (truly in parallel on free-threaded Python 3.13+), so a
  library's thread safety matters. This module records what is known about
  popular libraries and checks a list of them against a profile.

  Entries are `true` (safe to call from several threads), `:conditional`
  (safe with care, see the notes) or `false` (keep it in the process
  profile or serialise access with a lock).

      Snakepit.Compatibility.check("pandas", :thread)
      # => {:error, "pandas is not thread-safe: ..."}

      Snakepit.Compatibility.generate_report(["numpy", "torch", "pandas"], :thread)
      # => {:ok, %{recommendation: :process, incompatible: ["pandas"], ...}}

  Library names are matched case-insensitively, by distribution or import
  name (`"sklearn"` and `"scikit-learn"`, `"cv2"` and `"opencv"`), as
  strings or atoms. The matrix is a guide, not a guarantee: versions differ,
  and an adapter's own shared state needs the same care.
  """

  @type thread_safety :: true | false | :conditional
  @type library_info :: %{thread_safe: thread_safety(), notes: String.t()}

  @matrix %{
    "numpy" =>
      {true,
       "Array operations release the GIL; do not mutate one array from several threads at once."},
    "scipy" =>
      {true, "Numerical routines are safe on separate data; shared mutable arrays need a lock."},
    "torch" =>
      {true,
       "Inference on a shared model is safe; cap intra-op threads with torch.set_num_threads to avoid oversubscription."},
    "tensorflow" =>
      {true,
       "Graph and eager execution are thread-safe; share one model, keep per-request tensors local."},
    "jax" =>
      {true,
       "Jitted functions can be called from several threads; compilation is serialised internally."},
    "scikit-learn" =>
      {true,
       "predict/transform on a fitted estimator are safe; do not fit a shared estimator concurrently."},
    "xgboost" =>
      {true,
       "Prediction on a trained Booster is thread-safe; set nthread to share cores with other workers."},
    "lightgbm" =>
      {true, "Prediction is thread-safe; training the same Booster from several threads is not."},
    "transformers" =>
      {true, "Pipelines and models can serve concurrent requests; tokenizers are safe to share."},
    "tokenizers" =>
      {true,
       "The Rust tokenizers are thread-safe; set TOKENIZERS_PARALLELISM to control their own threads."},
    "requests" =>
      {true,
       "Module-level calls are safe; use one Session per thread, a Session is not guaranteed to be thread-safe."},
    "httpx" => {true, "Client instances are safe to share for concurrent requests."},
    "polars" =>
      {true,
       "Runs its own thread pool and releases the GIL; DataFrames are immutable by default."},
    "pyarrow" => {true, "Arrays and tables are immutable and safe to share between threads."},
    "numba" =>
      {:conditional,
       "Compiled functions are safe to call concurrently; the first call compiles, so warm them up before serving."},
    "opencv" =>
      {:conditional,
       "Most functions are safe on separate images; limit cv2.setNumThreads and avoid shared VideoCapture objects."},
    "pillow" =>
      {:conditional,
       "Separate Image objects are safe; one Image must not be modified from several threads."},
    "sqlalchemy" =>
      {:conditional,
       "Engines and connection pools are thread-safe; Sessions are not, use one Session per thread."},
    "psycopg2" =>
      {:conditional,
       "Connections can be shared between threads, cursors cannot; prefer a connection pool."},
    "spacy" =>
      {:conditional,
       "A loaded pipeline can serve concurrent nlp() calls for inference; training and pipeline changes are not safe."},
    "pandas" =>
      {false,
       "DataFrame operations are not thread-safe, even reads can race with internal caching; use the process profile or a lock."},
    "matplotlib" =>
      {false,
       "pyplot keeps global state; render from one thread or use the process profile (the object API with separate figures helps)."},
    "seaborn" =>
      {false, "Built on matplotlib's pyplot global state; same restrictions as matplotlib."},
    "sqlite3" =>
      {false,
       "Connections must not be shared between threads by default; open one connection per thread or use the process profile."}
  }

  @aliases %{
    "sklearn" => "scikit-learn",
    "scikit_learn" => "scikit-learn",
    "pytorch" => "torch",
    "tf" => "tensorflow",
    "cv2" => "opencv",
    "opencv-python" => "opencv",
    "opencv-python-headless" => "opencv",
    "pil" => "pillow",
    "psycopg2-binary" => "psycopg2",
    "huggingface-transformers" => "transformers"
  }

  @profiles [:thread, :process]

  @doc """
  Returns the matrix entry for a library, or `nil` when it is not listed.

      iex> Snakepit.Compatibility.get_library_info(:sklearn).thread_safe
      true
      iex> Snakepit.Compatibility.get_library_info("left-pad")
      nil
  """
  @spec get_library_info(String.t() | atom()) :: library_info() | nil
  def get_library_info(library) do
    case Map.fetch(@matrix, canonical(library)) do
      {:ok, {safe, notes}} -> %{thread_safe: safe, notes: notes}
      :error -> nil
    end
  end

  @doc """
  Checks one library against a worker profile.

  In `:process` every library is `{:ok, message}`. In `:thread`, safe
  libraries are `{:ok, message}`, conditional ones `{:warning, notes}`,
  unsafe ones `{:error, message}` and libraries not in the matrix
  `{:warning, message}`. Raises `ArgumentError` for any other profile.
  """
  @spec check(String.t() | atom(), :thread | :process) ::
          {:ok, String.t()} | {:warning, String.t()} | {:error, String.t()}
  def check(library, profile) do
    validate_profile!(profile)
    name = canonical(library)

    case {profile, Map.fetch(@matrix, name)} do
      {:process, _} ->
        {:ok, "#{name} is safe with the process profile: each worker has its own interpreter."}

      {:thread, {:ok, {true, notes}}} ->
        {:ok, "#{name} is thread-safe. #{notes}"}

      {:thread, {:ok, {:conditional, notes}}} ->
        {:warning, "#{name} is thread-safe only with care: #{notes}"}

      {:thread, {:ok, {false, notes}}} ->
        {:error, "#{name} is not thread-safe: #{notes}"}

      {:thread, :error} ->
        {:warning,
         "#{name} is not in the compatibility matrix; check its thread safety before using the thread profile."}
    end
  end

  @doc """
  Checks a list of libraries against a profile and summarises.

  Returns `{:ok, report}` where `report` has `:profile`, `:results` (one
  `%{library, status, message}` per library, in input order),
  `:compatible`, `:warnings`, `:incompatible`, `:unknown` (library names)
  and `:recommendation` (`:process` when anything is incompatible with the
  thread profile, otherwise the profile asked about). Returns
  `{:error, %Snakepit.Error{category: :validation}}` for a profile other
  than `:thread`/`:process` or libraries that are not a list of strings or
  atoms.
  """
  @spec generate_report([String.t() | atom()], :thread | :process) ::
          {:ok, map()} | {:error, term()}
  def generate_report(libraries, profile) do
    cond do
      profile not in @profiles ->
        {:error,
         Snakepit.Error.validation_error("unknown worker profile #{inspect(profile)}", %{
           field: :profile,
           value: profile,
           allowed: @profiles
         })}

      not (is_list(libraries) and Enum.all?(libraries, &(is_binary(&1) or is_atom(&1)))) ->
        {:error,
         Snakepit.Error.validation_error("libraries must be a list of strings or atoms", %{
           field: :libraries,
           value: libraries
         })}

      true ->
        {:ok, build_report(libraries, profile)}
    end
  end

  @doc """
  Lists library names by category (`:thread_safe`, `:thread_unsafe`,
  `:conditional` or `:all`), sorted.

      iex> Snakepit.Compatibility.list_all(:thread_unsafe)
      ["matplotlib", "pandas", "seaborn", "sqlite3"]
  """
  @spec list_all(:thread_safe | :thread_unsafe | :conditional | :all) :: [String.t()]
  def list_all(category) do
    wanted =
      case category do
        :thread_safe -> [true]
        :thread_unsafe -> [false]
        :conditional -> [:conditional]
        :all -> [true, false, :conditional]
        other -> raise ArgumentError, "unknown category #{inspect(other)}"
      end

    names = for {name, {safe, _notes}} <- @matrix, safe in wanted, do: name
    Enum.sort(names)
  end

  defp build_report(libraries, profile) do
    results =
      Enum.map(libraries, fn library ->
        {status, message} = check(library, profile)
        %{library: canonical(library), status: status, message: message}
      end)

    names = fn pred -> for r <- results, pred.(r), do: r.library end
    unknown = names.(&(not Map.has_key?(@matrix, &1.library)))
    incompatible = names.(&(&1.status == :error))

    %{
      profile: profile,
      results: results,
      compatible: names.(&(&1.status == :ok)),
      warnings: names.(&(&1.status == :warning)),
      incompatible: incompatible,
      unknown: unknown,
      recommendation: if(incompatible == [], do: profile, else: :process)
    }
  end

  defp canonical(library) when is_atom(library) and not is_nil(library),
    do: canonical(Atom.to_string(library))

  defp canonical(library) when is_binary(library) do
    name = library |> String.trim() |> String.downcase()
    dashed = String.replace(name, "_", "-")

    cond do
      Map.has_key?(@aliases, name) -> Map.fetch!(@aliases, name)
      Map.has_key?(@aliases, dashed) -> Map.fetch!(@aliases, dashed)
      Map.has_key?(@matrix, dashed) -> dashed
      true -> name
    end
  end

  defp canonical(other),
    do: raise(ArgumentError, "library must be a string or an atom, got: #{inspect(other)}")

  defp validate_profile!(profile) when profile in @profiles, do: :ok

  defp validate_profile!(profile) do
    raise ArgumentError,
          "unknown worker profile #{inspect(profile)}; expected :thread or :process"
  end
end
