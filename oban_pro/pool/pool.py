"""The worker pool: N child processes driven from the coordinator's event loop.

No thread per child: each child's result pipe is read by the event loop through
:class:`~oban_pro.pool.framing.FrameProtocol`, its job pipe is written through a buffered write
transport, and its exit is noticed through the process sentinel. Job code only ever runs in
children, so a stuck, crashing or leaking job costs one child, never the loop.

Which job is running where is always known: a child runs the jobs it was sent in order, so the
oldest job a child has not answered is the one running (``_Child.inflight[0]``). Timeouts are
armed for that job only, and when a child is killed or dies, only that job fails; any others
queued behind it in the child's window never started and are dispatched again.
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
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._aio import wait_event
from ..errors import ObanError
from .child import child_main, read_rss
from .framing import FrameProtocol, encode_frame
from .messages import Done, Ready, Run, Skip, Stop, decode_to_parent, encode_to_child

__all__ = [
    "WorkerPool",
    "PoolStats",
    "PoolError",
    "PoolFullError",
    "PoolClosedError",
    "PoolStartError",
    "RESTART_REASONS",
]

log = logging.getLogger(__name__)

#: Keys of :attr:`PoolStats.restarts`.
RESTART_REASONS = ("timeout", "crash", "memory", "recycle", "cancelled", "start_failure")

_MIB = 1024 * 1024
# Serialises process starts (multiprocess polls every child it knows about inside start()) with
# our own exit polling, across every pool of this process.
_PROCESS_LOCK = threading.Lock()


class PoolError(ObanError, RuntimeError):
    """Base class of worker-pool errors."""


class PoolFullError(PoolError):
    """``submit`` was called with no free slot (check ``free_slots`` first)."""


class PoolClosedError(PoolError):
    """The pool is stopping or stopped, or was never started."""


class PoolStartError(PoolError):
    """A child process could not be started or died before it was ready."""


@dataclass(slots=True)
class PoolStats:
    """A snapshot for metrics, taken at scrape time (see :attr:`WorkerPool.stats`)."""

    #: Configured number of children.
    processes: int
    #: Children alive and ready (busy or idle).
    ready: int
    #: Children running at least one job.
    busy: int
    #: Ready children with a free window slot.
    idle: int
    #: Children being started (replacements).
    starting: int
    #: Child restarts by reason: timeout, crash, memory, recycle, cancelled, start_failure.
    restarts: dict[str, int] = field(default_factory=dict)
    #: Last RSS (bytes) seen per live child pid.
    rss: dict[int, int] = field(default_factory=dict)
    #: Jobs that finished in a child (any outcome reported through ``on_done``).
    jobs_done: int = 0
    #: Jobs failed by the parent (crash, timeout, memory, cancelled).
    jobs_failed: int = 0
    #: Seconds the last child took from launch to ready.
    last_start_seconds: float = 0.0


# Child states.
_STARTING = "starting"  # launched, Ready not yet received
_READY = "ready"  # takes jobs
_RETIRING = "retiring"  # finishing its window, then Stop (recycle / memory)
_STOPPING = "stopping"  # Stop sent, waiting for it to exit
_DEAD = "dead"  # killed or died; waiting to be reaped
_GONE = "gone"  # reaped and closed


class _Child:
    __slots__ = (
        "process", "pid", "state", "inflight", "writer", "reader", "protocol", "read_fd",
        "jobs_done", "rss", "timer", "ready", "launched_at", "exit_seen", "exit_polls",
        "reaped", "sentinel", "import_errors", "initial", "killed", "polling",
    )  # fmt: skip

    def __init__(self, process: Any, read_fd: int, initial: bool, launched_at: float) -> None:
        self.process = process
        self.pid: int = process.pid
        self.state = _STARTING
        self.inflight: deque[Run] = deque()
        self.writer: asyncio.WriteTransport | None = None
        self.reader: asyncio.ReadTransport | None = None
        self.protocol: FrameProtocol | None = None
        self.read_fd = read_fd
        self.jobs_done = 0
        self.rss = 0
        self.timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.launched_at = launched_at
        self.exit_seen = False
        self.exit_polls = 0
        self.reaped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sentinel: int | None = getattr(process, "sentinel", None)
        self.import_errors: dict[str, str] = {}
        self.initial = initial
        self.killed = False
        self.polling = False

    def send(self, messages: list[Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(encode_frame(encode_to_child(messages)))

    def __repr__(self) -> str:
        return f"<child pid={self.pid} {self.state} inflight={len(self.inflight)}>"


class WorkerPool:
    """A pool of worker processes fed by the event loop.

    Use from one event loop: ``await start()``, then ``submit``/``submit_many`` jobs while
    ``free_slots`` allows; outcomes arrive through ``on_done(Done)`` (the job ran) and
    ``on_failed(job_id, reason, text)`` (the parent ended it: reason is "crash", "timeout",
    "memory" or "cancelled"). ``await stop(timeout)`` returns the ids of jobs that did not
    finish. Callbacks run on the event loop and must not block.
    """

    def __init__(
        self,
        processes: int,
        *,
        on_done: Callable[[Done], None],
        on_failed: Callable[[int, str, str], None],
        start_method: str = "forkserver",
        imports: Iterable[str] = (),
        max_jobs_per_child: int = 0,
        max_memory: int = 0,
        window: int = 1,
        memory_check_interval: float = 0.25,
        on_capacity: Callable[[], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if start_method not in ("fork", "forkserver", "spawn"):
            raise ValueError(
                f"start_method must be 'fork', 'forkserver' or 'spawn', got {start_method!r}"
            )
        self.processes = processes
        self.start_method = start_method
        self.imports = list(imports)
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory = max_memory
        self.window = window
        self.memory_check_interval = memory_check_interval
        self.start_timeout = start_timeout
        self._on_done = on_done
        self._on_failed = on_failed
        self._on_capacity = on_capacity
        self._on_restart = on_restart  # reason of every child replacement (for metrics)
        self._children: list[_Child] = []  # every child not yet reaped
        self._free = 0  # free window slots of READY children, kept up to date on every change
        self._job_child: dict[int, _Child] = {}
        self._pending: deque[Run] = deque()  # never started; dispatched before new jobs
        self._cancelled: set[int] = set()  # queued in a window, cancelled: ignore their Done
        self._restarts: Counter[str] = Counter()
        self._jobs_done = 0
        self._jobs_failed = 0
        self._last_start = 0.0
        self._start_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._ctx: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()  # replacements being started
        self._launches: set[asyncio.Future[None]] = set()  # process starts in progress
        self._import_errors_logged: set[str] = set()
        self._monitor: asyncio.TimerHandle | None = None
        self._started = False
        self._closing = False
        self._changed: asyncio.Event | None = None  # set whenever a child settles
        self._deadline = 0.0  # when stop() stops waiting for busy children

    # ================================================================ lifecycle

    async def start(self) -> None:
        """Start the children and wait until every one is ready.

        Raises :class:`PoolStartError` (after cleaning up) when a child cannot start.
        """
        if self._started:
            raise PoolError("the pool is already started")
        import multiprocess

        self._loop = asyncio.get_running_loop()
        self._ctx = multiprocess.get_context(self.start_method)
        self._changed = asyncio.Event()
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
        self._started = True
        started = time.monotonic()
        children: list[_Child] = []
        try:
            for _ in range(self.processes):
                children.append(await self._launch(initial=True))
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
        self._last_start = time.monotonic() - started
        for child in children:
            child.initial = False
        log.debug(
            "worker pool started: %d %s children in %.3f s",
            self.processes,
            self.start_method,
            self._last_start,
        )

    async def _abort_start(self) -> None:
        self._closing = True
        for child in list(self._children):
            self._kill_process(child)
        await self._wait_reaped(5.0)
        self._shutdown_executor()

    async def stop(self, timeout: float = 15.0) -> list[int]:
        """Stop every child; return the ids of jobs that did not finish.

        Idle children are told to stop at once; busy ones get up to ``timeout`` seconds to
        finish (their results are still delivered through ``on_done``), then are killed.
        Every child process is reaped before this returns.
        """
        if not self._started or self._closing:
            if self._closing:
                await self._wait_reaped(10.0)
            return []
        self._closing = True
        assert self._changed is not None
        unfinished = [run.job_id for run in self._pending]
        self._pending.clear()
        # Launches in flight finish (they take milliseconds); their children are stopped below.
        if self._launches:
            await asyncio.gather(*self._launches, return_exceptions=True)
        for child in list(self._children):
            self._stop_if_idle(child)
        self._deadline = time.monotonic() + max(timeout, 0.0)
        while any(c.inflight for c in self._live()):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            await wait_event(self._changed, remaining)
        for child in list(self._children):
            if child.state in (_DEAD, _GONE):
                continue
            if child.inflight:
                unfinished.extend(
                    r.job_id for r in child.inflight if r.job_id not in self._cancelled
                )
                self._kill_process(child)
                self._forget_jobs(child)
        # Jobs requeued while we waited (their child was killed or died) never started again.
        unfinished.extend(run.job_id for run in self._pending)
        self._pending.clear()
        # Children told to stop exit within milliseconds; give them a moment, then kill.
        await self._wait_reaped(3.0)
        for child in list(self._children):
            self._kill_process(child)
        await self._wait_reaped(10.0)
        for task in list(self._tasks):
            task.cancel()
        self._cancel_monitor()
        self._shutdown_executor()
        return unfinished

    def _count_restart(self, reason: str) -> None:
        self._restarts[reason] += 1
        if self._on_restart is not None:
            self._call(self._on_restart, reason)

    def hurry(self) -> None:
        """Cut a running :meth:`stop` short: busy children are killed now."""
        self._deadline = 0.0
        if self._changed is not None:
            self._changed.set()

    def _shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _wait_reaped(self, timeout: float) -> None:
        waiting = [c.reaped for c in self._children if not c.reaped.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    # ================================================================ capacity

    def _set_state(self, child: _Child, state: str) -> None:
        if child.state is _READY:
            self._free -= self.window - len(child.inflight)
        child.state = state
        if state is _READY:
            self._free += self.window - len(child.inflight)

    def _count_free(self) -> int:
        """The free-slot count recomputed from scratch (tests check it against ``_free``)."""
        return sum(self.window - len(c.inflight) for c in self._children if c.state is _READY)

    def _live(self) -> list[_Child]:
        return [c for c in self._children if c.state in (_READY, _RETIRING)]

    @property
    def free_slots(self) -> int:
        """Jobs that ``submit`` would accept right now."""
        if self._closing:
            return 0
        return max(0, self._free - len(self._pending))

    @property
    def idle_count(self) -> int:
        """Ready children with a free window slot."""
        window = self.window
        return sum(1 for c in self._children if c.state is _READY and len(c.inflight) < window)

    @property
    def busy_count(self) -> int:
        """Children running a job."""
        return sum(1 for c in self._children if c.inflight and c.state in (_READY, _RETIRING))

    @property
    def size(self) -> int:
        """Children alive and ready (at most ``processes``; fewer while replacements start)."""
        return sum(1 for c in self._children if c.state in (_READY, _RETIRING))

    def running_jobs(self) -> dict[int, int]:
        """Job id -> pid of the child holding it (running, or queued in its window)."""
        return {job_id: child.pid for job_id, child in self._job_child.items()}

    def pids(self) -> list[int]:
        """Pids of the children alive now (ready or busy)."""
        return [c.pid for c in self._children if c.state in (_READY, _RETIRING)]

    @property
    def stats(self) -> PoolStats:
        """A snapshot of counts and gauges for metrics.

        Safe to call from another thread (a metrics scrape): it only reads, from a copy.
        """
        window = self.window
        children = list(self._children)  # one atomic copy; the loop may change the list
        live = [c for c in children if c.state in (_READY, _RETIRING)]
        return PoolStats(
            processes=self.processes,
            ready=len(live),
            busy=sum(1 for c in live if c.inflight),
            idle=sum(1 for c in live if c.state is _READY and len(c.inflight) < window),
            starting=sum(1 for c in children if c.state is _STARTING),
            restarts={reason: self._restarts.get(reason, 0) for reason in RESTART_REASONS},
            rss={c.pid: c.rss for c in live},
            jobs_done=self._jobs_done,
            jobs_failed=self._jobs_failed,
            last_start_seconds=self._last_start,
        )

    # ================================================================ dispatch

    def submit(self, run: Run) -> None:
        """Send one job to the least-loaded ready child (raises PoolFullError if none)."""
        if self._pending or self._closing or not self._started or run.job_id in self._job_child:
            self.submit_many((run,))  # the general path raises the right error
            return
        child = self._pick()
        if child is None:
            self.submit_many((run,))
            return
        self._assign(child, run)
        child.send([run])

    def submit_many(self, runs: Iterable[Run]) -> None:
        """Send jobs to ready children, one frame per child.

        All or nothing: raises :class:`PoolFullError` when there are more jobs than
        ``free_slots``, and ``ValueError`` when a job id is already running here.
        """
        if not self._started or self._closing:
            raise PoolClosedError("the worker pool is not running (never started, or stopping)")
        runs = list(runs)
        if not runs:
            return
        free = self.free_slots
        if len(runs) > free:
            raise PoolFullError(
                f"{len(runs)} jobs submitted but only {free} slots are free "
                f"({self.idle_count} idle of {self.processes} children, window {self.window})"
            )
        job_child = self._job_child
        seen: set[int] = set()
        for run in runs:
            if run.job_id in job_child or run.job_id in seen:
                raise ValueError(f"job {run.job_id} is already running in this pool")
            seen.add(run.job_id)
        frames: dict[_Child, list[Any]] = {}
        if self._pending:
            runs = [*self._pending, *runs]
            self._pending.clear()
        for run in runs:
            child = self._pick()
            assert child is not None  # free_slots counted it
            self._assign(child, run)
            frames.setdefault(child, []).append(run)
        for child, batch in frames.items():
            child.send(batch)

    def _pick(self) -> _Child | None:
        window = self.window
        if window == 1:
            for child in self._children:
                if child.state is _READY and not child.inflight:
                    return child
            return None
        best: _Child | None = None
        for child in self._children:
            if child.state is _READY and len(child.inflight) < window:
                if best is None or len(child.inflight) < len(best.inflight):
                    best = child
        return best

    def _assign(self, child: _Child, run: Run) -> None:
        child.inflight.append(run)
        if child.state is _READY:
            self._free -= 1
        self._job_child[run.job_id] = child
        if run.timeout > 0 and len(child.inflight) == 1:
            self._arm_timeout(child)
        if self._monitor is None:
            self._schedule_monitor()

    def _dispatch_pending(self) -> None:
        if not self._pending or self._closing:
            return
        frames: dict[_Child, list[Any]] = {}
        while self._pending:
            child = self._pick()
            if child is None:
                break
            run = self._pending.popleft()
            self._assign(child, run)
            frames.setdefault(child, []).append(run)
        for child, batch in frames.items():
            child.send(batch)

    # ================================================================ cancel

    def kill_job(self, job_id: int, reason: str = "cancelled") -> bool:
        """Stop a running job by killing its child; ``on_failed(job_id, "cancelled", ...)``.

        Returns False when the job is not running here (or had already finished).
        """
        for run in self._pending:
            if run.job_id == job_id:
                self._pending.remove(run)
                self._fail(job_id, "cancelled", f"job was {reason} before it started")
                return True
        child = self._job_child.get(job_id)
        if child is None:
            return False
        self._drain(child)  # a result already in the pipe wins over the cancel
        if self._job_child.get(job_id) is not child:
            return False
        if child.inflight and child.inflight[0].job_id == job_id:
            self._kill(
                child,
                "cancelled",
                f"job was {reason}; its child process (pid {child.pid}) was killed",
            )
            return True
        # Queued behind another job in the child's window: tell the child to skip it.
        del self._job_child[job_id]
        self._cancelled.add(job_id)
        child.send([Skip(job_id)])
        self._fail(job_id, "cancelled", f"job was {reason} before it started")
        return True

    # ================================================================ launching

    async def _launch(self, *, initial: bool) -> _Child:
        """Start one child process and wire its pipes; returns before it is ready."""

        assert self._loop is not None
        loop = self._loop
        launched = loop.create_future()
        self._launches.add(launched)
        try:
            return await self._launch_process(initial)
        finally:
            launched.set_result(None)
            self._launches.discard(launched)

    async def _launch_process(self, initial: bool) -> _Child:
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
            for other in self._children:
                if other.read_fd >= 0:
                    close_fds.append(other.read_fd)
                if other.writer is not None and not other.writer.is_closing():
                    fd = other.writer.get_extra_info("pipe").fileno()
                    close_fds.append(fd)
        process = self._ctx.Process(
            target=child_main,
            args=(child_read, child_write, self.imports, close_fds),
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
        child = _Child(process, c2p_r, initial, launched_at)
        self._children.append(child)
        protocol = FrameProtocol(
            lambda payload: self._on_frame(child, payload), lambda: self._on_pipe_eof(child)
        )
        child.protocol = protocol
        reader, _ = await loop.connect_read_pipe(
            lambda: protocol, open(c2p_r, "rb", buffering=0, closefd=True)
        )
        writer, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, open(p2c_w, "wb", buffering=0, closefd=True)
        )
        child.reader = reader  # type: ignore[assignment]
        child.writer = writer  # type: ignore[assignment]
        if child.sentinel is not None:
            loop.add_reader(child.sentinel, self._on_sentinel, child)
        if self._closing:
            child.send([Stop()])
            self._set_state(child, _STOPPING)
        return child

    def _spawn_replacement(self) -> None:
        if self._closing:
            return
        task = asyncio.ensure_future(self._replace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        while not self._closing:
            if self._start_failures:
                await asyncio.sleep(min(0.05 * 2 ** (self._start_failures - 1), 5.0))
                if self._closing:
                    return
            try:
                child = await self._launch(initial=False)
            except Exception as exc:  # noqa: BLE001 - keep trying: the pool must refill
                self._start_failures += 1
                self._count_restart("start_failure")
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
                self._kill_process(child)
            except PoolStartError:
                pass  # already logged by the exit handler
            if self._closing:
                return
            self._start_failures += 1
            self._count_restart("start_failure")

    # ================================================================ messages

    def _on_frame(self, child: _Child, payload: bytes) -> None:
        if child.state in (_DEAD, _GONE):
            return  # already reported; whatever it said last is stale
        try:
            messages = decode_to_parent(payload)
        except Exception as exc:  # noqa: BLE001 - a corrupt stream: that child is unusable
            log.error("worker process %d sent an undecodable frame: %s", child.pid, exc)
            self._kill(
                child,
                "crash",
                f"child process (pid {child.pid}) sent an undecodable message ({exc}); it was "
                "killed",
            )
            return
        for message in messages:
            if type(message) is Done:
                self._on_job_done(child, message)
            elif type(message) is Ready:
                self._on_ready(child, message)

    def _on_ready(self, child: _Child, ready: Ready) -> None:
        child.import_errors = dict(ready.import_errors)
        for module, text in ready.import_errors.items():
            if module not in self._import_errors_logged:
                self._import_errors_logged.add(module)
                log.error(
                    "worker module %r failed to import in the worker processes (pid %d): %s; "
                    "its jobs will fail until it is fixed",
                    module,
                    ready.pid,
                    text,
                )
        if child.state is _STARTING:
            self._set_state(child, _READY)
        child.rss = read_rss(child.pid)
        self._last_start = time.monotonic() - child.launched_at
        self._start_failures = 0
        if not child.ready.done():
            child.ready.set_result(None)
        if not child.initial and child.state is _READY:
            self._dispatch_pending()
            if self._on_capacity is not None:
                self._call(self._on_capacity)

    def _on_job_done(self, child: _Child, done: Done) -> None:
        job_id = done.job_id
        inflight = child.inflight
        if inflight and inflight[0].job_id == job_id:
            inflight.popleft()
            if child.state is _READY:
                self._free += 1
            if child.timer is not None:
                child.timer.cancel()
                child.timer = None
            if inflight:
                self._arm_timeout(child)
        else:
            for run in inflight:  # never expected: children answer in order
                if run.job_id == job_id:
                    inflight.remove(run)
                    if child.state is _READY:
                        self._free += 1
                    break
            else:
                log.warning("child %d reported job %d it was not running", child.pid, job_id)
                return
        if self._job_child.get(job_id) is child:
            del self._job_child[job_id]
        child.rss = done.rss
        if done.kind == "skipped" or job_id in self._cancelled:
            self._cancelled.discard(job_id)
        else:
            child.jobs_done += 1
            self._jobs_done += 1
            if child.state is _READY:
                if self.max_jobs_per_child and child.jobs_done >= self.max_jobs_per_child:
                    self._retire(child, "recycle")
                elif self.max_memory and done.rss > self.max_memory:
                    self._retire(child, "memory")
            self._call(self._on_done, done)
        self._stop_if_idle(child)
        if self._pending:
            self._dispatch_pending()
        if self._closing and self._changed is not None:
            self._changed.set()

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - a callback bug must not break the pool
            log.exception("worker pool callback %r raised", callback)

    # ================================================================ recycling

    def _retire(self, child: _Child, reason: str) -> None:
        """Take no more jobs; stop once idle; start the replacement now."""
        self._set_state(child, _RETIRING)
        self._count_restart(reason)
        log.info(
            "recycling worker process %d (%s) after %d jobs", child.pid, reason, child.jobs_done
        )
        self._spawn_replacement()

    def _stop_if_idle(self, child: _Child) -> None:
        if child.inflight:
            return
        if child.state is _RETIRING or (self._closing and child.state in (_READY, _STARTING)):
            self._set_state(child, _STOPPING)
            child.send([Stop()])

    # ================================================================ timeouts and memory

    def _arm_timeout(self, child: _Child) -> None:
        run = child.inflight[0]
        if run.timeout > 0:
            assert self._loop is not None
            child.timer = self._loop.call_later(run.timeout, self._on_timeout, child, run.job_id)

    def _on_timeout(self, child: _Child, job_id: int) -> None:
        child.timer = None
        self._drain(child)  # the job may have finished just now
        if child.state in (_DEAD, _GONE) or not child.inflight:
            return
        run = child.inflight[0]
        if run.job_id != job_id:
            return
        self._kill(
            child,
            "timeout",
            f"job exceeded its timeout of {run.timeout:g} s; its child process "
            f"(pid {child.pid}) was killed",
        )

    def _schedule_monitor(self) -> None:
        assert self._loop is not None
        self._monitor = self._loop.call_later(self.memory_check_interval, self._check_memory)

    def _cancel_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None

    def _check_memory(self) -> None:
        """Sample the RSS of busy children; kill one that passed max_memory mid-job."""
        self._monitor = None
        busy = [c for c in self._children if c.inflight and c.state in (_READY, _RETIRING)]
        for child in busy:
            rss = read_rss(child.pid)
            if not rss:
                continue
            child.rss = rss
            if self.max_memory and rss > self.max_memory:
                self._drain(child)
                if child.state in (_DEAD, _GONE) or not child.inflight:
                    continue
                self._kill(
                    child,
                    "memory",
                    f"child process (pid {child.pid}) exceeded max_memory: RSS "
                    f"{rss / _MIB:.1f} MiB > limit {self.max_memory / _MIB:.1f} MiB",
                )
        if any(c.inflight for c in self._children if c.state in (_READY, _RETIRING)):
            self._schedule_monitor()

    # ================================================================ killing and dying

    def _kill(self, child: _Child, reason: str, text: str) -> None:
        """SIGKILL a child; fail its running job with ``reason``; requeue the rest."""
        head = child.inflight[0] if child.inflight else None
        was = child.state
        self._kill_process(child)
        self._count_restart(reason)
        log.warning("killed worker process %d (%s): %s", child.pid, reason, text)
        self._requeue(child, skip=head)
        if head is not None and head.job_id not in self._cancelled:
            self._fail(head.job_id, reason, text)
        self._cancelled.discard(head.job_id if head else -1)
        if was is _READY:
            self._spawn_replacement()  # a retiring child's was started when it retired
        if self._changed is not None:
            self._changed.set()

    def _kill_process(self, child: _Child) -> None:
        """SIGKILL a child and its process group; it will be reaped through its sentinel."""
        if child.state is _GONE:
            return
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        child.killed = True
        self._set_state(child, _DEAD)
        self._signal(child, signal.SIGKILL)
        self._close_pipes(child)
        self._start_exit_poll(child)

    def _signal(self, child: _Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.killpg(child.pid, sig)  # the child leads its own group (jobs' subprocesses too)
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.kill(child.pid, sig)  # in case it had not made its group yet

    def _requeue(self, child: _Child, skip: Run | None) -> None:
        """Jobs queued behind the running one never started: dispatch them again."""
        assert child.state is not _READY  # its slots left the free count with its state
        requeue = [r for r in child.inflight if r is not skip and r.job_id not in self._cancelled]
        for run in child.inflight:
            if self._job_child.get(run.job_id) is child:
                del self._job_child[run.job_id]
            if run is not skip:
                self._cancelled.discard(run.job_id)
        child.inflight.clear()
        if requeue:
            # While stopping they stay here and stop() returns them as unfinished.
            self._pending.extendleft(reversed(requeue))
            self._dispatch_pending()

    def _forget_jobs(self, child: _Child) -> None:
        assert child.state is not _READY
        for run in child.inflight:
            if self._job_child.get(run.job_id) is child:
                del self._job_child[run.job_id]
            self._cancelled.discard(run.job_id)
        child.inflight.clear()

    def _fail(self, job_id: int, reason: str, text: str) -> None:
        self._jobs_failed += 1
        self._call(self._on_failed, job_id, reason, text)

    def _drain(self, child: _Child) -> None:
        """Read whatever the child already wrote, so its results are seen before a verdict."""
        protocol = child.protocol
        if protocol is None or child.read_fd < 0 or child.reader is None:
            return
        if child.reader.is_closing():
            return
        while True:
            try:
                data = os.read(child.read_fd, 1 << 18)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            protocol.data_received(data)

    def _on_pipe_eof(self, child: _Child) -> None:
        child.read_fd = -1  # the transport closed it
        self._exit_seen(child)

    def _on_sentinel(self, child: _Child) -> None:
        assert self._loop is not None
        if child.sentinel is not None:
            self._loop.remove_reader(child.sentinel)
        self._drain(child)
        self._exit_seen(child)

    def _exit_seen(self, child: _Child) -> None:
        child.exit_seen = True
        self._start_exit_poll(child)

    def _start_exit_poll(self, child: _Child) -> None:
        if not child.polling:
            child.polling = True
            self._poll_exit(child)

    def _poll_exit(self, child: _Child) -> None:
        """Reap the child without blocking the loop, then settle what it was doing."""
        if child.state is _GONE:
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
                self._signal(child, signal.SIGKILL)
            if child.exit_polls > 2000:  # ~20 s: someone else reaped it
                self._settle_exit(child, None)
                return
            assert self._loop is not None
            delay = 0.001 if child.exit_polls < 20 else 0.01
            self._loop.call_later(delay, self._poll_exit, child)
            return
        self._settle_exit(child, code)

    def _settle_exit(self, child: _Child, code: int | None) -> None:
        assert self._loop is not None
        if child.state is _GONE:
            return
        was = child.state
        how = _describe_exit(code)
        self._set_state(child, _GONE)
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        if child.sentinel is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(child.sentinel)
        self._close_pipes(child)
        with contextlib.suppress(Exception):
            if code is not None:
                child.process.close()
        with contextlib.suppress(ValueError):
            self._children.remove(child)
        if was is _STARTING:
            error = PoolStartError(
                f"worker process {child.pid} {how} before it was ready "
                f"(its stderr says why; imports: {self.imports})"
            )
            if not child.ready.done():
                child.ready.set_exception(error)
                child.ready.exception()  # mark retrieved: replacements log instead
            log.error("%s", error)
        elif was in (_READY, _RETIRING):
            # Died by itself (we mark children we kill DEAD first).
            if child.inflight:
                head = child.inflight[0]
                text = (
                    f"child process (pid {child.pid}) died while running the job: {how}; "
                    f"last RSS {child.rss / _MIB:.1f} MiB"
                )
                self._count_restart("crash")
                log.error("worker process %d died running job %d: %s", child.pid, head.job_id, how)
                self._requeue(child, skip=head)
                if head.job_id not in self._cancelled:
                    self._fail(head.job_id, "crash", text)
                self._cancelled.discard(head.job_id)
            else:
                self._count_restart("crash")
                log.error("idle worker process %d died: %s", child.pid, how)
            if was is _READY:
                self._spawn_replacement()  # a retiring child's replacement already started
        if not child.ready.done():  # killed before it was ready
            child.ready.set_exception(
                PoolStartError(f"worker process {child.pid} {how} before it was ready")
            )
            child.ready.exception()
        if not child.reaped.done():
            child.reaped.set_result(None)
        if self._changed is not None:
            self._changed.set()

    def _close_pipes(self, child: _Child) -> None:
        if child.writer is not None and not child.writer.is_closing():
            child.writer.close()
        if child.reader is not None and not child.reader.is_closing():
            child.reader.close()
            child.read_fd = -1


def _locked_start(process: Any) -> None:
    with _PROCESS_LOCK:
        process.start()


def _describe_exit(code: int | None) -> str:
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
