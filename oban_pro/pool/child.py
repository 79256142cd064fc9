"""The worker process: import worker modules once, then run many jobs at once.

The child runs an event loop in its main thread. Jobs whose ``process`` is a coroutine function
run as tasks on that loop; sync ones run on :class:`~.job_threads.JobThreads` (started as
needed, up to ``threads``). For every job the child reports :class:`~.messages.Started` as it
hands the job to its task or thread, written *before* the job's code can run (a job that kills
the process at once is then charged to itself), and :class:`~.messages.Done` when it ends, so
the parent knows exactly what runs where.

An isolated job may arrive *on deck* (:class:`~.messages.RunNext`): it starts the moment the
isolated job ahead of it ends, on the thread (or loop iteration) that ends it, and its Started
leaves in the same frame as that job's Done, so the child never waits for the parent between
two such jobs. Until then it has not begun: the parent can take it back
(:class:`~.messages.Withdraw`), a Stop gives it back, an Interrupt ends it unstarted.

The parent's pipe is read by the loop (``add_reader``, non-blocking); messages to the parent go
through :class:`_Outbox`, which gathers everything produced in one loop iteration into one frame.
A job that ends on a thread writes its Done itself, at once (threads that end together share
one frame): a result waiting for the loop, which job code can keep busy or starve of the GIL for
many milliseconds, would be lost if a sibling job crashed the process meanwhile, and the
finished job would run again. The loop's bookkeeping of those jobs is handed back to it in
batches (one wake-up per batch).

Cancelling a job starts with :class:`~.messages.RequestCancel`, which only makes its
``job.cancelled()`` return True (the job may notice and return, as in Oban.py). Stopping a job
(:class:`~.messages.Interrupt`, sent after the cancel grace or at a timeout) is cooperative
too: a task is cancelled, a thread
gets :class:`~oban_pro.runner.JobInterrupted` raised in it (``PyThreadState_SetAsyncExc``, which
takes effect at the job's next Python bytecode: a job blocked in a C call does not notice, and
the parent kills the child after its kill grace).

Signals are the parent's business: the child ignores SIGINT (a terminal's Ctrl-C reaches the
whole process group) and puts itself in its own process group so the parent can kill it together
with anything the job started. A watchdog thread exits the child when the parent dies, so an
orphaned child never keeps running a job that the database will hand to another node.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..job import Job
from ..runner import JobInterrupted, JobRunner, Prepared
from . import child_instance
from .child_instance import ChildOban
from .framing import FrameProtocol, write_frame
from .job_threads import JobThreads
from .messages import (
    Done,
    InstanceInfo,
    Interrupt,
    NotBegun,
    Ready,
    RequestCancel,
    Resize,
    Run,
    RunNext,
    Started,
    Stop,
    Withdraw,
    Withdrawn,
    decode_to_child,
    encode_to_parent,
)

__all__ = ["child_main", "read_rss", "ORPHAN_EXIT_CODE"]

#: Exit code of a child whose parent died while it was running a job.
ORPHAN_EXIT_CODE = 70

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _raise_in_thread(thread_id: int, exc: type[BaseException]) -> None:
    """Have ``exc`` raised in thread ``thread_id`` at its next Python bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def _clear_in_thread(thread_id: int) -> None:
    """Withdraw an exception set by :func:`_raise_in_thread` that was not raised yet."""
    # None becomes a NULL pointer here (no argtypes on the shared pythonapi), which clears.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def read_rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class _SelfRss:
    """Reads this process' RSS with one pread on a descriptor kept open (~2 us).

    The pread is called through ``ctypes.PyDLL``, which keeps the GIL: a job thread reads the
    RSS between its job's end and writing the Done, and getting the GIL back after a releasing
    call can take many milliseconds while other threads burn CPU, all of it time in which the
    result has not left the process (and is lost if a sibling job crashes it).
    """

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(128)
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            pread = ctypes.PyDLL(None).pread
        except (OSError, AttributeError):
            self._fd = None
            return
        pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
        pread.restype = ctypes.c_ssize_t
        self._pread = pread

    def __call__(self) -> int:
        if self._fd is None:
            return 0
        got = self._pread(self._fd, self._buf, 128, 0)
        try:
            return int(self._buf.raw[:got].split()[1]) * _PAGE_SIZE if got > 0 else 0
        except (IndexError, ValueError):
            return 0


def child_main(
    read_conn: Any,
    write_conn: Any,
    imports: list[str],
    close_fds: list[int] | None = None,
    threads: int = 64,
    instance: InstanceInfo | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    """Entry point of a worker process.

    ``read_conn``/``write_conn`` are :class:`multiprocess.connection.Connection` objects (they
    survive every start method) or plain descriptors; only their descriptors are used, with the
    raw framing of :mod:`oban_pro.pool.framing`. ``close_fds`` are descriptors inherited through
    ``fork`` that belong to the parent or to sibling children. ``threads`` caps the thread pool
    that runs sync jobs. ``instance`` is the node's instance for job code
    (``Oban.get_instance()``, see :mod:`.child_instance`); None leaves it unavailable.
    ``environ`` is the node's environment when this child was started: a forkserver started
    earlier (by the first node of the process) would otherwise hand it the environment of that
    moment, and job code reads settings from it.
    """
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    _reset_process_state(close_fds or [])
    read_fd = read_conn if isinstance(read_conn, int) else read_conn.fileno()
    write_fd = write_conn if isinstance(write_conn, int) else write_conn.fileno()
    for fd in (read_fd, write_fd):
        try:
            os.set_inheritable(fd, False)  # subprocesses of jobs must not hold our pipes
        except OSError:
            pass
    runner = JobRunner(imports)
    server = _Server(read_fd, write_fd, runner, max(1, threads), instance)
    _start_orphan_watchdog(read_fd, server)
    try:
        write_frame(write_fd, encode_to_parent([Ready(os.getpid(), runner.import_errors)]))
        server.serve()
    except BrokenPipeError:
        pass  # the parent is gone: nobody is left to tell
    # Keep the Connection objects alive until here: collecting them would close our pipes.
    del read_conn, write_conn


class _Outbox:
    """Messages for the parent, written as one frame per loop iteration (or sooner: a frame of
    jobs' Started messages is flushed before those jobs start).

    Job threads hand their Done to :meth:`send_from_thread`, which writes it at once without
    the loop: the first thread to arrive writes, and keeps writing what other threads add
    meanwhile, so results that end together still leave in one frame. A lock keeps frames
    from interleaving on the pipe.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, write_fd: int, rss: Callable[[], int]
    ) -> None:
        self._loop = loop
        self._fd = write_fd
        self._rss = rss
        self._messages: list[Any] = []
        self._scheduled = False
        self._write_lock = threading.Lock()
        # Messages from job threads, and whether a thread is writing them now.
        self._from_threads: list[Any] = []
        self._threads_lock = threading.Lock()
        self._thread_writing = False

    def put(self, message: Any) -> None:
        self._messages.append(message)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        messages, self._messages = self._messages, []
        self._scheduled = False
        if messages:
            self._write(messages)

    def send_from_thread(self, *messages: Any) -> None:
        """Write ``messages`` now, in one frame, from a job thread (or have the thread writing
        now do it)."""
        with self._threads_lock:
            self._from_threads.extend(messages)
            if self._thread_writing:
                return
            self._thread_writing = True
        try:
            while True:
                with self._threads_lock:
                    batch, self._from_threads = self._from_threads, []
                    if not batch:
                        self._thread_writing = False
                        return
                self._write(batch)
        except BaseException:
            with self._threads_lock:
                self._thread_writing = False
            raise

    def _write(self, messages: list[Any]) -> None:
        # The child's RSS after its jobs, read once per frame (a read costs ~4 us, a job of
        # an async no-op queue ~40 us), as the frame leaves: what the parent's memory limit
        # checks. Every Done of the frame carries it.
        rss = -1
        for message in messages:
            if type(message) is Done:
                if rss < 0:
                    rss = self._rss()
                message.rss = rss
        payload = encode_to_parent(messages)
        try:
            with self._write_lock:
                write_frame(self._fd, payload)
        except OSError:
            pass  # the parent is gone; the orphan watchdog (or EOF) ends this process


class _Job:
    """One job in this child: how it runs and how to stop it."""

    __slots__ = (
        "run", "job", "task", "thread_id", "lock", "interrupted", "finished", "deck_closed",
    )  # fmt: skip

    def __init__(self, run: Run, job: Job) -> None:
        self.run = run
        #: The Job the worker's code is given (its ``cancelled()`` flag is set from here).
        self.job = job
        self.task: asyncio.Task[None] | None = None
        self.thread_id: int | None = None
        # Guards thread_id/finished against an Interrupt raising into a thread whose job ended.
        self.lock = threading.Lock()
        self.interrupted = False
        self.finished = False
        #: It ended (or is ending): no job may go on deck behind it any more.
        self.deck_closed = False


class _Server:
    """The child's event loop: takes messages, starts jobs, reports their ends."""

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        runner: JobRunner,
        threads: int,
        instance: InstanceInfo | None = None,
    ) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._runner = runner
        self._threads = threads
        self._jobs: dict[int, _Job] = {}
        self._stopping = False
        self._pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._outbox = _Outbox(self._loop, write_fd, _SelfRss())
        self._job_threads = JobThreads(threads)
        # Jobs that ended on a thread (their Done already written), handed back to the loop in
        # batches (one wake-up each) to be forgotten.
        self._ended: list[_Job] = []
        self._ended_lock = threading.Lock()
        # On-deck jobs by the id of the isolated job each one follows (RunNext). A job's end
        # and a Withdraw race for its follower: whoever pops it under the lock has it.
        self._deck: dict[int, tuple[_Job, Prepared]] = {}
        self._deck_lock = threading.Lock()
        self._finished = self._loop.create_future()
        self._protocol = FrameProtocol(self._on_frame, self._on_eof)
        # What job code gets from Oban.get_instance(); its pool opens at the first call.
        self._instance = ChildOban(instance, self._loop) if instance is not None else None
        child_instance.install(self._instance)

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    # -- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        os.set_blocking(self._read_fd, False)
        self._loop.add_reader(self._read_fd, self._on_readable)
        try:
            self._loop.run_until_complete(self._finished)
            self._outbox.flush()
            self._loop.run_until_complete(self._close_instance())
        finally:
            self._loop.remove_reader(self._read_fd)
            self._job_threads.shutdown()
            self._loop.close()

    async def _close_instance(self) -> None:
        instance = self._instance
        child_instance.install(None)
        if instance is not None:
            try:
                await asyncio.wait_for(instance.close(), 2.0)
            except Exception:  # noqa: BLE001 - leaving anyway: the server drops the sessions
                pass

    def _on_readable(self) -> None:
        try:
            data = os.read(self._read_fd, 1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self._read_fd)
            self._protocol.connection_lost(None)
            return
        self._protocol.data_received(data)

    def _on_eof(self) -> None:
        # The parent closed our pipe (or died): nobody will read our results. Leave now (after
        # closing job code's connections, if it opened any); the orphan watchdog already covers
        # a parent that died while we were busy.
        if self._instance is not None and self._instance.has_pool:
            self._loop.create_task(self._exit_after(self._close_instance()))
            return
        self._exit()

    async def _exit_after(self, closing: Any) -> None:
        try:
            await closing
        finally:
            self._exit()

    def _exit(self) -> None:
        try:
            self._outbox.flush()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)

    def _on_frame(self, payload: bytes) -> None:
        starting: list[tuple[_Job, Prepared]] = []
        for message in decode_to_child(payload):
            if isinstance(message, Run):
                self._prepare(message, starting)
            elif isinstance(message, RunNext):
                self._put_on_deck(message, starting)
            elif isinstance(message, Withdraw):
                self._withdraw(message.job_id)
            elif isinstance(message, Interrupt):
                self._start(starting)
                starting = []
                self._interrupt(message.job_id, timeout=message.timeout)
            elif isinstance(message, RequestCancel):
                self._request_cancel(message.job_id)  # a flag: jobs prepared above have it
            elif isinstance(message, Stop):
                self._stopping = True
                with self._deck_lock:
                    on_deck = [job.run.job_id for job, _ in self._deck.values()]
                for job_id in on_deck:
                    self._withdraw(job_id)  # an on-deck job has not begun: it goes back
                self._maybe_finish()
            elif isinstance(message, Resize):
                self._job_threads.resize(message.threads)
        self._start(starting)

    def _maybe_finish(self) -> None:
        if self._stopping and not self._jobs and not self._finished.done():
            self._finished.set_result(None)

    # -- starting ---------------------------------------------------------------------------

    def _prepare(
        self,
        run: Run,
        starting: list[tuple[_Job, Prepared]],
        prepared: Prepared | Done | None = None,
    ) -> None:
        if prepared is None:
            prepared = self._runner.prepare(run)
        if isinstance(prepared, Done):
            self._outbox.put(Started(run.job_id))
            self._report(prepared, 0.0)
            return
        job = self._jobs[run.job_id] = _Job(run, prepared.job)
        self._outbox.put(Started(run.job_id, thread=not prepared.is_async))
        starting.append((job, prepared))

    def _put_on_deck(self, message: RunNext, starting: list[tuple[_Job, Prepared]]) -> None:
        """Keep ``message.run`` ready to start the moment job ``message.after`` ends (on the
        thread or loop iteration that ends it); if that job has ended already, start it now."""
        run = message.run
        prepared = self._runner.prepare(run)
        if not isinstance(prepared, Done):
            with self._deck_lock:
                ahead = self._jobs.get(message.after)
                if ahead is not None and not ahead.deck_closed and message.after not in self._deck:
                    job = self._jobs[run.job_id] = _Job(run, prepared.job)
                    self._deck[message.after] = (job, prepared)
                    return
        self._prepare(run, starting, prepared)

    def _next_on_deck(self, job: _Job) -> tuple[_Job, Prepared] | None:
        """``job`` is ending: close its deck and take the job waiting on it, if any."""
        with self._deck_lock:
            job.deck_closed = True
            return self._deck.pop(job.run.job_id, None)

    def _take_from_deck(self, job_id: int) -> _Job | None:
        """Take on-deck job ``job_id`` back before it begins (None if it is not on deck)."""
        with self._deck_lock:
            for ahead, (job, _) in self._deck.items():
                if job.run.job_id == job_id:
                    del self._deck[ahead]
                    break
            else:
                return None
        self._jobs.pop(job_id, None)
        return job

    def _withdraw(self, job_id: int) -> None:
        if self._take_from_deck(job_id) is not None:
            self._outbox.put(Withdrawn(job_id))
            self._maybe_finish()

    def _begin(self, following: tuple[_Job, Prepared]) -> None:
        """On the loop: start an on-deck job whose turn came."""
        job, prepared = following
        self._outbox.put(Started(job.run.job_id, thread=not prepared.is_async))
        self._start([following])

    def _start(self, starting: list[tuple[_Job, Prepared]]) -> None:
        """Start jobs whose Started is in the outbox: it is written first, in one frame, so a
        job that kills the process at once is charged to itself, never to the others."""
        if not starting:
            return
        self._outbox.flush()
        for job, prepared in starting:
            if prepared.is_async:
                job.task = self._loop.create_task(self._run_task(job, prepared))
            else:
                self._job_threads.submit(self._run_thread, job, prepared)

    def _measure(self, done: Done, started: float) -> Done:
        done.duration = time.perf_counter() - started if started else 0.0
        return done

    def _report(self, done: Done, started: float) -> None:
        self._outbox.put(self._measure(done, started))

    def _finish(self, job: _Job, done: Done, started: float) -> None:
        """On the loop: report the job's end and forget it; its on-deck job starts, its
        Started in the same frame as this Done."""
        following = self._next_on_deck(job)
        self._forget(job)
        self._report(done, started)
        if following is not None:
            self._begin(following)

    def _forget(self, job: _Job) -> None:
        self._jobs.pop(job.run.job_id, None)
        self._maybe_finish()

    async def _run_task(self, job: _Job, prepared: Prepared) -> None:
        started = time.perf_counter()
        try:
            result = await prepared.instance.process(prepared.job)
            done = self._runner.classify(job.run.job_id, result)
        except asyncio.CancelledError:
            if not job.interrupted:
                raise  # the loop itself is going away
            done = Done(job.run.job_id, "interrupted")
        except BaseException as exc:  # noqa: BLE001 - SystemExit fails the job, not the child
            done = self._runner.failure(prepared, traceback.format_exc(), exc)
        self._leave_if_forked()
        self._finish(job, done, started)

    def _run_thread(self, job: _Job, prepared: Prepared) -> None:
        """Run a sync job on this thread, then the job on deck behind it, if any: a sync one
        right here, its Started written with this job's Done (the child is never idle between
        the two), an async one handed to the loop."""
        while True:
            started = time.perf_counter()
            done = self._execute_on_thread(job, prepared)
            following = self._next_on_deck(job)
            self._leave_if_forked()
            report = self._measure(done, started)
            if following is not None and not following[1].is_async:
                self._outbox.send_from_thread(report, Started(following[0].run.job_id, True))
            else:
                self._outbox.send_from_thread(report)
                if following is not None:
                    self._loop.call_soon_threadsafe(self._begin, following)
            with self._ended_lock:
                first = not self._ended
                self._ended.append(job)
            if first:
                self._loop.call_soon_threadsafe(self._forget_ended)
            if following is None or following[1].is_async:
                return
            job, prepared = following

    def _execute_on_thread(self, job: _Job, prepared: Prepared) -> Done:
        done: Done | None = None
        try:
            try:
                with job.lock:
                    job.thread_id = threading.get_ident()
                    if job.interrupted:
                        raise JobInterrupted
                result = prepared.instance.process(prepared.job)
                if asyncio.iscoroutine(result) or asyncio.isfuture(result):
                    result = asyncio.run_coroutine_threadsafe(_await(result), self._loop).result()
                done = self._runner.classify(job.run.job_id, result)
            except JobInterrupted:
                done = Done(job.run.job_id, "interrupted")
            except BaseException as exc:  # noqa: BLE001 - SystemExit in a job fails the job only
                done = self._runner.failure(prepared, traceback.format_exc(), exc)
            self._end_thread_job(job)
        except JobInterrupted:
            # An interrupt that arrived as the job was ending, raised in our own bookkeeping.
            self._end_thread_job(job)
            if done is None:
                done = Done(job.run.job_id, "interrupted")
        return done

    def _forget_ended(self) -> None:
        with self._ended_lock:
            ended, self._ended = self._ended, []
        for job in ended:
            self._forget(job)

    def _end_thread_job(self, job: _Job) -> None:
        with job.lock:
            job.finished = True
            if job.thread_id is not None:
                # Clear an interrupt set but not raised yet: it must not hit the next job
                # this thread runs.
                _clear_in_thread(job.thread_id)

    def _leave_if_forked(self) -> None:
        if os.getpid() != self._pid:
            # Job code called fork() and this is the copy returning: only the real worker may
            # report and take jobs, so the copy leaves without touching the pipes.
            os._exit(0)

    # -- stopping ---------------------------------------------------------------------------

    def _request_cancel(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is not None:  # else it ended already; its Done is on the way
            job.job.request_cancellation()

    def _interrupt(self, job_id: int, *, timeout: bool = False) -> None:
        if self._take_from_deck(job_id) is not None:  # it never began: it ends here
            self._outbox.put(Done(job_id, "interrupted"))
            self._maybe_finish()
            return
        job = self._jobs.get(job_id)
        if job is None:
            return  # it ended already; its Done is on the way
        if job.task is not None:
            job.interrupted = True
            job.task.cancel()
            return
        with job.lock:
            if job.thread_id is None and timeout:
                # Still waiting for a thread: it has not run, so it has not run out of time.
                self._outbox.put(NotBegun(job_id))
                return
            job.interrupted = True  # a job still waiting for a thread sees it when it gets one
            if job.thread_id is not None and not job.finished:
                _raise_in_thread(job.thread_id, JobInterrupted)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _reset_process_state(close_fds: list[int]) -> None:
    """Undo what a ``fork`` copied from the parent that a worker must not use."""
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.setpgid(0, 0)  # own process group: the parent kills the job's subprocesses with us
    except OSError:
        pass
    if threading.current_thread() is threading.main_thread():
        try:
            signal.set_wakeup_fd(-1)  # a forked asyncio parent's wakeup socket is not ours
        except (ValueError, OSError):
            pass
        for sig in signal.valid_signals():
            try:
                handler = signal.getsignal(sig)
            except (ValueError, OSError):
                continue
            if callable(handler) and sig != signal.SIGINT:
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (ValueError, OSError):
                    pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A fork inside a running event loop leaves that loop marked as running in this thread.
    asyncio.events._set_running_loop(None)
    # The parent starts us as a daemon (so it reaps us at exit even if never stopped); jobs
    # that use multiprocess themselves must still be allowed to start processes.
    try:
        from multiprocess import process as mp_process

        mp_process.current_process()._config.pop("daemon", None)
    except Exception:  # noqa: BLE001
        pass


def _start_orphan_watchdog(read_fd: int, server: _Server) -> None:
    """Exit when the parent dies mid-job (our read pipe hangs up), without reading from it."""

    def watch() -> None:
        poller = select.poll()
        poller.register(read_fd, 0)  # POLLHUP is always reported, data is left alone
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            except OSError:
                return
            if any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events):
                break
        # An idle child sees EOF and exits by itself; a busy one is running jobs that nobody
        # will ever ack: stop now rather than race the node that will run them again.
        if server.busy:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(ORPHAN_EXIT_CODE)

    threading.Thread(target=watch, name="oban-orphan-watchdog", daemon=True).start()
