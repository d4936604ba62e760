"""Slide parsing in warm child processes with a memory cap and a time limit (``SlideWorkers``).

OpenSlide, libtiff, libjpeg and Pillow are C parsers of untrusted files: a slide that makes one of
them crash, allocate without bound or loop for ever must take down a child, never the agent. Each
worker is a fresh interpreter (``python -c ...serve(fd)``, exec'd like
multiprocessing's ``spawn``, so it inherits neither Prefect's threads nor the agent's locks) that
imports the parsers once, caps its address space (``RLIMIT_AS``) and then serves calls on a
*target* object (the pipeline's slide reader, pickled to it once): ``call("validate", unit)``
runs ``target.validate(unit)`` there. Arguments and results cross as pickles over a socketpair
(``multiprocessing.connection``); an exception raised there arrives here as the same class with
the same message and attributes (``core.errors`` classes included).

When a worker dies on a signal, reports ``MemoryError`` or outlasts ``timeout_seconds``, the call
raises ``WorkerFailed`` (what happened, for the caller to word against the file) and a fresh
worker is started at once, so the next scan finds one warm. The pool keeps at most ``size``
workers, started on first use. A worker leaves when the agent does (it watches its parent).
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Mapping
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from types import MappingProxyType
from typing import Any

log = logging.getLogger(__name__)

#: How long a new worker may take to import the parsers before it counts as broken.
STARTUP_SECONDS = 120.0
#: The worker's program: this module imported under its own name (so what it pickles, such as the
#: read-only mapping's reducer, names ``scanner_agent.slides.worker``, which the agent can look up).
_CHILD_MAIN = "import sys; from scanner_agent.slides.worker import serve; serve(int(sys.argv[1]))"
#: Environment for the worker: one BLAS thread (numpy), so its address space is the parsers', not
#: a thread pool's reserved stacks, and the memory cap means what it says.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: What of the agent's environment a worker sees: what Python and the libraries need, never the
#: agent's secrets (Slack token, SMTP password, Prefect credentials) in a process fed untrusted files.
_KEEP_ENV = re.compile(
    r"(PATH|HOME|USER|LANG|LC_\w+|TZ|TMPDIR|PYTHON\w*|VIRTUAL_ENV|LD_LIBRARY_PATH|OPENSLIDE\w*)"
)


def _mappingproxy(items: dict[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(items)


def _reduce_mappingproxy(m: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mappingproxy, (dict(m),)


# ``SlideInfo.properties`` is a read-only mapping, which pickle cannot carry by itself.
ForkingPickler.register(MappingProxyType, _reduce_mappingproxy)


class WorkerFailed(Exception):
    """A worker did not answer a call: ``cause`` is ``"signal"`` (``detail`` names it, e.g.
    ``SIGSEGV``), ``"memory"`` (it ran out of its ``memory_mb``), ``"timeout"`` (it took longer
    than ``seconds``) or ``"exit"`` (it exited, ``detail`` the status)."""

    def __init__(self, cause: str, detail: str = "", *, seconds: float = 0.0, memory_mb: int = 0) -> None:
        super().__init__(f"slide worker failed: {cause} {detail}".strip())
        self.cause = cause
        self.detail = detail
        self.seconds = seconds
        self.memory_mb = memory_mb


class _Worker:
    """One child process and its end of the socketpair."""

    def __init__(self, target: object, memory_mb: int) -> None:
        parent, child = Pipe()
        env = {k: v for k, v in os.environ.items() if _KEEP_ENV.fullmatch(k)} | _WORKER_ENV
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            child.close()
        self.conn: Connection = parent
        self.ready = False
        parent.send(("init", target, memory_mb))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(STARTUP_SECONDS):
            self.kill()
            raise RuntimeError(f"the slide worker did not start within {STARTUP_SECONDS:.0f} s")
        try:
            self.conn.recv()
        except EOFError:
            code = self.proc.wait(10)
            raise RuntimeError(f"the slide worker exited while starting (status {code})") from None
        self.ready = True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:  # stuck in the kernel (a dead NFS read): leave it, say so
            log.error("slide worker %d did not exit after SIGKILL", self.proc.pid)
        self.conn.close()


class SlideWorkers:
    """A pool of at most ``size`` warm workers serving calls on ``target`` (picklable)."""

    def __init__(self, target: object, *, memory_mb: int, timeout_seconds: float, size: int = 1) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.target = target
        self.memory_mb = memory_mb
        self.timeout_seconds = timeout_seconds
        self.size = size
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._closed = False
        # A pool dropped without close() (a test's agent) still takes its children with it.
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    # --- the pool ----------------------------------------------------------------------------

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the slide workers are closed")
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                if len(self._all) < self.size:
                    return self._spawn()
        while True:  # all busy: wait for one back (or for room, if a failed one could not be replaced)
            try:
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._closed:
                        raise RuntimeError("the slide workers are closed") from None
                    if len(self._all) < self.size:
                        return self._spawn()

    def _spawn(self) -> _Worker:
        """A new worker (the lock is held)."""
        worker = _Worker(self.target, self.memory_mb)
        self._all.append(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        """Drop a failed worker and start a fresh one now, so the next call finds it warm."""
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            if self._closed:
                return
            try:
                fresh = self._spawn()
            except OSError as exc:  # started on the next call instead
                log.error("could not start a fresh slide worker: %s", exc)
                return
        self._idle.put(fresh)

    def pids(self) -> list[int]:
        """The workers' process ids (for status and tests)."""
        with self._lock:
            return [w.pid for w in self._all]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.kill()

    # --- a call ------------------------------------------------------------------------------

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``target.method(*args, **kwargs)`` in a worker: its result, or its exception raised
        here; ``WorkerFailed`` if the worker died, ran out of memory or took too long."""
        worker = self._take()
        try:
            worker.wait_ready()
        except BaseException:
            self._replace(worker)
            raise
        try:
            reply = self._ask(worker, method, args, kwargs)
        except BaseException:
            self._replace(worker)
            raise
        self._give_back(worker)
        status, value = reply
        if status == "ok":
            return value
        raise value

    def _ask(self, worker: _Worker, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = time.monotonic()
        try:
            worker.conn.send((method, args, kwargs))
            if not worker.conn.poll(self.timeout_seconds):
                log.warning(
                    "slide worker %d: %s took longer than %g s; killing it",
                    worker.pid,
                    method,
                    self.timeout_seconds,
                )
                raise WorkerFailed("timeout", seconds=self.timeout_seconds)
            reply = worker.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise self._death(worker, time.monotonic() - started) from None
        if reply[0] == "memory":
            raise WorkerFailed("memory", memory_mb=self.memory_mb)
        return reply

    def _death(self, worker: _Worker, seconds: float) -> WorkerFailed:
        try:
            code = worker.proc.wait(10)
        except subprocess.TimeoutExpired:
            return WorkerFailed("exit", "closed its pipe but did not exit", seconds=seconds)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            log.warning("slide worker %d died on %s", worker.pid, name)
            return WorkerFailed("signal", name, seconds=seconds, memory_mb=self.memory_mb)
        return WorkerFailed("exit", f"status {code}", seconds=seconds)


def _kill_all(workers: list[_Worker]) -> None:
    for w in list(workers):
        w.kill()


# --- the child ---------------------------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError saying what it was; either way with
    the worker's traceback as a note, for the agent's log."""
    try:
        pickle.loads(ForkingPickler.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    if not hasattr(exc, "kind"):  # core.errors instances are never changed after construction
        exc.add_note("in the slide worker:\n" + "".join(traceback.format_exception(exc)).rstrip())
    return exc


def _leave_with_parent(parent: int) -> None:
    """Exit when the agent has gone (reparented), even in the middle of a hung parse."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(fd: int) -> None:
    """The worker's main loop: ``init`` once, then one reply per call until the agent hangs up."""
    parent = os.getppid()
    conn = Connection(fd)
    _, target, memory_mb = conn.recv()
    _leave_with_parent(parent)
    cap = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash on a bad slide is expected: no core files
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the agent's to handle, not the worker's
    conn.send(("ready", os.getpid()))
    while True:
        try:
            method, args, kwargs = conn.recv()
        except EOFError:
            return
        reply: tuple[str, Any]
        try:
            reply = ("ok", getattr(target, method)(*args, **kwargs))
        except MemoryError:
            reply = ("memory", None)
        except BaseException as exc:
            reply = ("err", _portable(exc))
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", None))
        except Exception as exc:  # a result that cannot be pickled: a bug, said as such
            conn.send(("err", _portable(RuntimeError(f"the slide worker's answer could not be sent: {exc}"))))
