defmodule BadgeForge.Badges do
  @moduledoc """
  Asks the Python side of Badge Forge to render badges.

  A job for Python is an ordinary `Oban.Job` whose worker is the Python worker's name, a
  string: Elixir needs no module for it. An oban_pro node serving the `badges` queue
  (`python -m badge_forge --serve`, or `oban-pro start --import badge_forge.generator
  --queues badges:4`) renders the PDF and enqueues `BadgeForge.PrintCenter` back.

  Only Python serves `badges`, so leave it out of this app's `:queues`.
  """

  @generator "badge_forge.generator.GenerateBadge"

  @doc "Enqueue one badge for the attendee `id` called `name`."
  def forge(id, name) do
    %{id: id, name: name}
    |> Oban.Job.new(worker: @generator, queue: :badges)
    |> Oban.insert()
  end

  @doc "Enqueue badges for many attendees (`%{id: id, name: name}` maps) in one insert."
  def forge_all(attendees) do
    attendees
    |> Enum.map(&Oban.Job.new(Map.take(&1, [:id, :name]), worker: @generator, queue: :badges))
    |> Oban.insert_all()
  end
end
