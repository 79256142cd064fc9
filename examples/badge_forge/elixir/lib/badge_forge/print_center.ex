defmodule BadgeForge.PrintCenter do
  @moduledoc """
  Prints a badge the Python side rendered.

  Python enqueues these jobs itself (`Oban.get_instance().enqueue(Job(worker:
  "BadgeForge.PrintCenter", queue: "printing", args: {"id": ..., "path": ...}))`), so the
  only contract is the worker name, the queue and the args: `"id"` as this app sent it and
  `"path"`, the PDF's absolute path on the Python node's disk (share the folder, or upload
  the file from Python instead, when the apps run on different hosts).
  """

  use Oban.Worker, queue: :printing

  require Logger

  @impl Oban.Worker
  def perform(%Oban.Job{args: %{"id" => id, "path" => path}}) do
    Logger.info("printing badge #{id} from #{path}")
    # Send `path` to the printer here; a job that raises is retried with Oban's backoff.
    :ok
  end
end
