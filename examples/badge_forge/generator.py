"""The worker the Elixir app names: ``badge_forge.generator.GenerateBadge`` in queue ``badges``.

It runs on the node's worker processes. WeasyPrint is synchronous and CPU-bound, so the render
goes to a thread of the child, whose event loop keeps serving the child's other jobs; the
confirmation for Elixir is enqueued the way the article writes it,
``await Oban.get_instance().enqueue(Job(...))``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from oban_pro import Cancel, Job, Oban, worker

from .badge import Attendee, BadgeArgsError, render_badge

__all__ = ["GenerateBadge", "PRINT_CENTER", "PRINT_QUEUE", "output_folder"]

#: The Elixir worker that prints a finished badge, and the queue only the Elixir app serves.
PRINT_CENTER = "BadgeForge.PrintCenter"
PRINT_QUEUE = "printing"

#: Where badges are written: this variable, else ``./badges`` (read by the worker process).
OUTPUT_VARIABLE = "BADGE_FORGE_OUTPUT"


def output_folder() -> Path:
    """The folder badges are written to (``BADGE_FORGE_OUTPUT``, default ``./badges``)."""
    return Path(os.environ.get(OUTPUT_VARIABLE) or "badges").resolve()


@worker(queue="badges")
class GenerateBadge:
    """Render the badge of ``{"id", "name"}`` to a PDF, then ask Elixir to print it."""

    async def process(self, job: Job) -> Cancel | None:
        try:
            attendee = Attendee.from_args(job.args)
        except BadgeArgsError as exc:
            return Cancel(str(exc))  # retrying cannot fix the args the Elixir app sent
        path = await asyncio.to_thread(render_badge, attendee, output_folder())
        await Oban.get_instance().enqueue(
            Job(
                args={"id": attendee.id, "path": str(path)},
                queue=PRINT_QUEUE,
                worker=PRINT_CENTER,
            )
        )
        return None
