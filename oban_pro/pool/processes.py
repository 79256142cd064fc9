"""Process supervision: start the children, wire their pipes to the event loop, notice and reap
their exits, replace them.

No thread per child: each child's result pipe is read by the event loop through
:class:`~oban_pro.pool.framing.FrameProtocol`, its job pipe is written through a buffered write
transport, and its exit is noticed through the process sentinel (and the pipe's end), then
reaped by polling its exit code without blocking. What a frame or an exit *means* for jobs is
the pool's business: the :class:`Supervisor` only reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import ObanError
from .child import child_main
from .framing import FrameProtocol, encode_frame
from .messages import InstanceInfo, Stop, encode_to_child

if TYPE_CHECKING:
    from .ledger import PoolJob

__all__ = [
    "ChildProcess",
    "Supervisor",
    "PoolError",
    "PoolClosedError",
    "PoolStartError",
    "describe_exit",
    "STARTING",
    "READY",
    "DRAINING",
    "STOPPING",
    "DEAD",
    "GONE",
]

log = logging.getLogger(__name__)

# Serialises process starts (multiprocess polls every child it knows about inside start()) with
# our own exit polling, across every pool of this process.
_PROCESS_LOCK = threading.Lock()

# Child states.
STARTING = "starting"  # launched, Ready not yet received
READY = "ready"  # takes jobs
DRAINING = "draining"  # takes no new jobs; Stop once its jobs are done (recycle / memory)
STOPPING = "stopping"  # Stop sent, waiting for it to exit
DEAD = "dead"  # killed or died; waiting to be reaped
GONE = "gone"  # reaped and closed


class PoolError(ObanError, RuntimeError):
    """Base class of worker-pool errors."""


class PoolClosedError(PoolError):
    """The pool is stopping or stopped, or was never started."""


class PoolStartError(PoolError):
    """A child process could not be started or died before it was ready."""


class ChildProcess:
    """One worker process as the parent sees it: its pipes, state and jobs."""

    __slots__ = (
        "process", "pid", "slot", "state", "jobs", "isolated", "reserved", "writer", "reader",
        "protocol", "read_fd", "jobs_done", "jobs_taken", "rss", "ready", "launched_at",
        "exit_polls", "reaped", "sentinel", "import_errors", "initial", "killed", "polling",
        "drain_reason",
    )  # fmt: skip

    def __init__(
        self, process: Any, read_fd: int, slot: int, initial: bool, launched_at: float
    ) -> None:
        loop = asyncio.get_running_loop()
        self.process = process
        self.pid: int = process.pid
        #: A small stable number (0..processes-1) for metrics labels; a replacement reuses it.
        self.slot = slot
        self.state = STARTING
        #: The jobs sent to this child and not yet settled (kept by the ledger).
        self.jobs: dict[int, PoolJob] = {}
        #: It holds an isolated job: nothing else may be placed here.
        self.isolated = False
        #: Kept empty for an isolated job that waits for it.
        self.reserved = False
        self.writer: asyncio.WriteTransport | None = None
        self.reader: asyncio.ReadTransport | None = None
        self.protocol: FrameProtocol | None = None
        self.read_fd = read_fd
        self.jobs_done = 0
        self.jobs_taken = 0
        self.rss = 0
        self.ready: asyncio.Future[None] = loop.create_future()
        self.launched_at = launched_at
        self.exit_polls = 0
        self.reaped: asyncio.Future[None] = loop.create_future()
        self.sentinel: int | None = getattr(process, "sentinel", None)
        self.import_errors: dict[str, str] = {}
        self.initial = initial
        self.killed = False
        self.polling = False
        self.drain_reason = ""

    @property
    def load(self) -> int:
        return len(self.jobs)

    @property
    def alive(self) -> bool:
        """Ready or draining: it runs jobs."""
        return self.state is READY or self.state is DRAINING

    @property
    def open_to_jobs(self) -> bool:
        return self.state is READY and not self.isolated and not self.reserved

    def dying(self) -> bool:
        """The process has exited (not reaped yet) or is writing a core dump: its death is
        on the way, though its pipe may stay open a while (a core dump can take a second)."""
        return process_dying(self.pid)

    def send(self, messages: list[Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(encode_frame(encode_to_child(messages)))

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.killpg(self.pid, sig)  # the child leads its own group (jobs' subprocesses too)
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.kill(self.pid, sig)  # in case it had not made its group yet

    def read_pending(self) -> None:
        """Read whatever the child already wrote, so its results are seen before a verdict."""
        protocol = self.protocol
        if protocol is None or self.read_fd < 0 or self.reader is None:
            return
        if self.reader.is_closing():
            return
        while True:
            try:
                data = os.read(self.read_fd, 1 << 18)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if not data:
                return
            protocol.data_received(data)

    def close_pipes(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()
        if self.reader is not None and not self.reader.is_closing():
            self.reader.close()
            self.read_fd = -1

    def __repr__(self) -> str:
        return f"<child pid={self.pid} {self.state} jobs={len(self.jobs)}>"


class Supervisor:
    """Keeps ``processes`` children running and reports what they say and when they exit.

    ``on_frame(child, payload)`` gets each frame a child writes; ``on_exit(child, code, was)``
    is called once a child is reaped (``was`` is its state before: a child we killed is DEAD,
    one that died by itself READY or DRAINING); ``on_restart(reason)`` counts replacements
    that could not start ("start_failure").
    """

    def __init__(
        self,
        processes: int,
        *,
        start_method: str,
        imports: list[str],
        threads: int,
        start_timeout: float,
        on_frame: Callable[[ChildProcess, bytes], None],
        on_exit: Callable[[ChildProcess, int | None, str], None],
        on_restart: Callable[[str], None],
        instance: InstanceInfo | None = None,
    ) -> None:
        if start_method not in ("fork", "forkserver", "spawn"):
            raise ValueError(
                f"start_method must be 'fork', 'forkserver' or 'spawn', got {start_method!r}"
            )
        self.processes = processes
        self.start_method = start_method
        self.imports = imports
        self.threads = threads
        self.start_timeout = start_timeout
        #: Given to every child at start: the node's instance for job code.
        self.instance = instance
        self.children: list[ChildProcess] = []  # every child not yet reaped
        self.closing = False
        self.last_start = 0.0
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._on_restart = on_restart
        self._start_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._ctx: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()  # replacements being started
        self._launches: set[asyncio.Future[None]] = set()  # process starts in progress

    # -- starting -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every child and wait until all are ready (PoolStartError otherwise)."""
        import multiprocess

        self._loop = asyncio.get_running_loop()
        self._ctx = multiprocess.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Modules the forkserver imports once are shared by every child it forks. Only
            # modules this process imported successfully: one that raises anything but
            # ImportError at import would kill the forkserver itself. No effect once the
            # forkserver of this process is running.
            preload = ["oban_pro.pool.child"]
            preload += [m for m in self.imports if m in sys.modules and m not in preload]
            self._ctx.set_forkserver_preload(preload)
        if self.start_method != "fork":
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="oban-pool-start")
        started = time.monotonic()
        children: list[ChildProcess] = []
        try:
            for _ in range(self.processes):
                children.append(await self.launch(initial=True))
            await asyncio.wait_for(asyncio.gather(*(c.ready for c in children)), self.start_timeout)
        except BaseException as exc:
            await self._abort_start()
            if isinstance(exc, PoolStartError):
                raise
            if isinstance(exc, asyncio.TimeoutError):
                raise PoolStartError(
                    f"worker processes were not ready within {self.start_timeout} s"
                ) from None
            if isinstance(exc, Exception):
                raise PoolStartError(f"could not start worker processes: {exc}") from exc
            raise
        self.last_start = time.monotonic() - started
        for child in children:
            child.initial = False

    async def _abort_start(self) -> None:
        self.closing = True
        for child in list(self.children):
            self.kill(child)
        await self.wait_reaped(5.0)
        self.shutdown_executor()

    def child_ready(self, child: ChildProcess) -> None:
        """A child said Ready: it takes jobs now."""
        if child.state is STARTING:
            child.state = READY
        self.last_start = time.monotonic() - child.launched_at
        self._start_failures = 0
        if not child.ready.done():
            child.ready.set_result(None)

    async def launch(self, *, initial: bool) -> ChildProcess:
        """Start one child process and wire its pipes; returns before it is ready."""
        assert self._loop is not None
        launched = self._loop.create_future()
        self._launches.add(launched)
        try:
            return await self._launch_process(self._free_slot(), initial)
        finally:
            launched.set_result(None)
            self._launches.discard(launched)

    async def _launch_process(self, slot: int, initial: bool) -> ChildProcess:
        import multiprocess.connection as mpc

        assert self._loop is not None
        loop = self._loop
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        child_read = mpc.Connection(p2c_r, writable=False)
        child_write = mpc.Connection(c2p_w, readable=False)
        close_fds: list[int] = []
        if self.start_method == "fork":
            # A forked child inherits every descriptor: the parent's ends of its own pipes and
            # of its siblings' pipes must be closed there, or EOF would never reach them.
            close_fds = [p2c_w, c2p_r]
            for other in self.children:
                if other.read_fd >= 0:
                    close_fds.append(other.read_fd)
                if other.writer is not None and not other.writer.is_closing():
                    close_fds.append(other.writer.get_extra_info("pipe").fileno())
        process = self._ctx.Process(
            target=child_main,
            args=(
                child_read,
                child_write,
                self.imports,
                close_fds,
                self.threads,
                self.instance,
                dict(os.environ),
            ),  # fmt: skip
            name="oban-pool-child",
            daemon=True,
        )
        launched_at = time.monotonic()
        try:
            if self._executor is None:
                with _PROCESS_LOCK:
                    process.start()
            else:
                await loop.run_in_executor(self._executor, _locked_start, process)
        except BaseException:
            for fd in (p2c_w, c2p_r):
                os.close(fd)
            raise
        finally:
            child_read.close()
            child_write.close()
        child = ChildProcess(process, c2p_r, slot, initial, launched_at)
        self.children.append(child)
        protocol = FrameProtocol(
            lambda payload: self._on_frame(child, payload), lambda: self._pipe_closed(child)
        )
        child.protocol = protocol
        # The write side first: once the read side is connected the child's Ready can arrive,
        # and jobs are sent to it at once.
        writer, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, open(p2c_w, "wb", buffering=0, closefd=True)
        )
        child.writer = writer  # type: ignore[assignment]
        reader, _ = await loop.connect_read_pipe(
            lambda: protocol, open(c2p_r, "rb", buffering=0, closefd=True)
        )
        child.reader = reader  # type: ignore[assignment]
        if child.sentinel is not None:
            loop.add_reader(child.sentinel, self._on_sentinel, child)
        if self.closing:
            child.send([Stop()])
            child.state = STOPPING
        return child

    def _free_slot(self) -> int:
        # The lowest number no child uses: metrics label children by slot, not pid, so the
        # series stay few however often children are replaced.
        used = {c.slot for c in self.children}
        slot = 0
        while slot in used:
            slot += 1
        return slot

    def replace(self) -> None:
        """Start a replacement child in the background (retried with backoff)."""
        if self.closing:
            return
        task = asyncio.ensure_future(self._replace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        while not self.closing:
            if self._start_failures:
                await asyncio.sleep(min(0.05 * 2 ** (self._start_failures - 1), 5.0))
                if self.closing:
                    return
            try:
                child = await self.launch(initial=False)
            except Exception as exc:  # noqa: BLE001 - keep trying: the pool must refill
                self._start_failures += 1
                self._on_restart("start_failure")
                log.error("could not start a replacement worker process: %s", exc)
                continue
            try:
                await asyncio.wait_for(asyncio.shield(child.ready), self.start_timeout)
                return
            except TimeoutError:
                log.error(
                    "replacement worker process %d not ready after %s s; killing it",
                    child.pid,
                    self.start_timeout,
                )
                self.kill(child)
            except PoolStartError:
                pass  # already logged by the exit handler
            if self.closing:
                return
            self._start_failures += 1
            self._on_restart("start_failure")

    async def wait_launches(self) -> None:
        if self._launches:
            await asyncio.gather(*self._launches, return_exceptions=True)

    # -- stopping -----------------------------------------------------------------------------

    def kill(self, child: ChildProcess) -> None:
        """SIGKILL a child and its process group; it will be reaped through its sentinel."""
        if child.state is GONE:
            return
        child.killed = True
        child.state = DEAD
        child.signal(signal.SIGKILL)
        child.close_pipes()
        self._start_exit_poll(child)

    def ask_to_stop(self, child: ChildProcess) -> None:
        """Tell an idle child to exit (it does once its jobs are done)."""
        if child.state in (READY, DRAINING, STARTING):
            child.state = STOPPING
            child.send([Stop()])

    async def wait_reaped(self, timeout: float) -> None:
        waiting = [c.reaped for c in self.children if not c.reaped.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    def cancel_replacements(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- exits --------------------------------------------------------------------------------

    def _pipe_closed(self, child: ChildProcess) -> None:
        child.read_fd = -1  # the transport closed it
        self._start_exit_poll(child)

    def _on_sentinel(self, child: ChildProcess) -> None:
        assert self._loop is not None
        if child.sentinel is not None:
            self._loop.remove_reader(child.sentinel)
        child.read_pending()
        self._start_exit_poll(child)

    def _start_exit_poll(self, child: ChildProcess) -> None:
        if not child.polling:
            child.polling = True
            self._poll_exit(child)

    def _poll_exit(self, child: ChildProcess) -> None:
        """Reap the child without blocking the loop, then report its exit."""
        if child.state is GONE:
            return
        code = None
        if _PROCESS_LOCK.acquire(blocking=False):
            try:
                code = child.process.exitcode
            except ValueError:  # process object already closed
                code = -1
            finally:
                _PROCESS_LOCK.release()
        if code is None:
            child.exit_polls += 1
            if child.exit_polls == 200 and not child.killed:
                # Our pipe closed ~2 s ago but the process lives on: it cannot serve anymore.
                log.warning(
                    "worker process %d closed its pipe but did not exit; killing it", child.pid
                )
                child.signal(signal.SIGKILL)
            if child.exit_polls > 2000:  # ~20 s: someone else reaped it
                self._reaped(child, None)
                return
            assert self._loop is not None
            delay = 0.001 if child.exit_polls < 20 else 0.01
            self._loop.call_later(delay, self._poll_exit, child)
            return
        self._reaped(child, code)

    def _reaped(self, child: ChildProcess, code: int | None) -> None:
        assert self._loop is not None
        if child.state is GONE:
            return
        was = child.state
        child.state = GONE
        if child.sentinel is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(child.sentinel)
        child.close_pipes()
        with contextlib.suppress(Exception):
            if code is not None:
                child.process.close()
        with contextlib.suppress(ValueError):
            self.children.remove(child)
        how = describe_exit(code)
        if was is STARTING and not child.ready.done():
            error = PoolStartError(
                f"worker process {child.pid} {how} before it was ready "
                f"(its stderr says why; imports: {self.imports})"
            )
            child.ready.set_exception(error)
            child.ready.exception()  # mark retrieved: replacements log instead
            log.error("%s", error)
        try:
            self._on_exit(child, code, was)
        finally:
            if not child.ready.done():  # killed before it was ready
                child.ready.set_exception(
                    PoolStartError(f"worker process {child.pid} {how} before it was ready")
                )
                child.ready.exception()
            if not child.reaped.done():
                child.reaped.set_result(None)


def _locked_start(process: Any) -> None:
    with _PROCESS_LOCK:
        process.start()


def process_dying(pid: int) -> bool:
    """True when process ``pid`` is gone, a zombie, or dumping core (``/proc``)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith(b"State:"):
            if line.split()[1:2] in ([b"Z"], [b"X"]):
                return True
        elif line.startswith(b"CoreDumping:"):
            return line.split()[1:2] == [b"1"]
    return False


def describe_exit(code: int | None) -> str:
    """Human words for a multiprocess exit code (negative = killed by that signal)."""
    if code is None:
        return "exited (exit status unknown: it was reaped elsewhere)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by signal {name} ({-code})"
    return f"exited with code {code}"
