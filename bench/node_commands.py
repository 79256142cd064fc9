"""The stdin protocol of a benchmark node process, shared by oban_pro's (bench/node.py) and
Oban.py's (bench/peer_obanpy.py, which loads this file by path: it imports nothing of either
engine). Prints ``ready <pid>``, then serves ``pause``, ``resume`` and ``leader?`` lines until
stdin closes or SIGTERM arrives."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any


async def serve(oban: Any, queue: str, node: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {os.getpid()}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while True:
            line = (await reader.readline()).decode().strip()
            if not line:
                stop.set()
                return
            if line == "pause":
                await oban.pause_queue(queue, node=node)
                print("ok", flush=True)
            elif line == "resume":
                await oban.resume_queue(queue, node=node)
                print("ok", flush=True)
            elif line == "leader?":
                print(f"leader {'yes' if oban.is_leader else 'no'}", flush=True)

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
