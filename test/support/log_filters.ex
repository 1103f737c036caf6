defmodule Snakepit.Test.LogFilters do
  @moduledoc """
  Logger filters for the test run (installed by test_helper.exs).

  Tests restart the `:snakepit` application hundreds of times; OTP's
  application controller logs each stop as a notice ("Application snakepit
  exited: :stopped"), which buried the test results. Only that report, for
  that application and that reason, is dropped: any other exit (a crash of
  the application) is still logged.
  """

  @doc "A `:logger` filter: `:stop` for snakepit's own normal stop, else `:ignore`."
  @spec drop_app_stopped(:logger.log_event(), term()) :: :logger.filter_return()
  def drop_app_stopped(%{msg: {:report, %{label: {:application_controller, :exit}} = report}}, _) do
    case report do
      %{report: info} when is_list(info) ->
        if info[:application] == :snakepit and info[:exited] == :stopped, do: :stop, else: :ignore

      _ ->
        :ignore
    end
  end

  def drop_app_stopped(_event, _extra), do: :ignore
end
