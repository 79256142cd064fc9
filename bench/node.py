"""A standalone oban_pro node for the multi-node scenarios (``python -m bench.node ...``).

It prints ``ready <pid>`` once started, then obeys lines on stdin: ``pause``/``resume`` (its own
queue, this node only) and ``leader?`` (answers ``leader yes|no``). It stops gracefully on
SIGTERM or when stdin closes. ``BENCH_NODE`` is set to the node name so jobs can say where they
ran. The rescue scenario ``kill -9``s it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from bench.node_commands import serve


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.node")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--name", default="bench-rescue")
    parser.add_argument("--queue", default="bench_long")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--config", default="{}", help="JSON of extra Config fields")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    from oban_pro import Oban

    os.environ["BENCH_NODE"] = args.node  # inherited by worker processes started below
    oban = Oban(
        dsn=args.dsn,
        prefix=args.prefix,
        name=args.name,
        node=args.node,
        queues={args.queue: args.limit},
        processes=args.processes,
        imports=["bench.workers"],
        **json.loads(args.config),
    )
    await oban.start()
    await serve(oban, args.queue, args.node)
    await oban.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
