"""Starting and stopping oban_pro nodes for the benchmarks (in this process)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

_names = itertools.count(1)


def quiet_logs() -> None:
    """Keep engine warnings out of the tables (errors still show)."""
    logging.getLogger("oban_pro").setLevel(logging.ERROR)


async def start_node(
    dsn: str, prefix: str, queues: dict[str, int], *, processes: int, **config: Any
) -> Any:
    """A started oban_pro node running ``queues`` with the bench workers importable (every
    other setting at its default unless given)."""
    from oban_pro import Oban

    oban = Oban(
        dsn=dsn,
        prefix=prefix,
        queues=queues,
        processes=processes,
        imports=["bench.workers"],
        name=f"bench-{next(_names)}",
        node="bench-node",
        **config,
    )
    await oban.start()
    return oban


async def stop_node(oban: Any) -> None:
    await oban.stop()
