"""How fast the agent may read: one token bucket, and the gate that picks the transfers' rate.

The ``TokenBucket`` paces every reader the agent runs in the background: the copies (through a
``TransferGate``) and the background fixity check (``fixity.py``, ``verify_mb_per_second``).

A ``TransferGate`` is handed to the copy engine (``place_scan(gate=...)``). Before each read the
engine's reader takes that many bytes from the gate. The rate is ``max_mb_per_second`` (None:
unlimited), lowered to ``scanning_mb_per_second`` while the watcher says a scan in the watch
folder is still growing (``yield_while_scanning``). The gate's bucket holds at most a quarter of
a second of tokens, so no idle period lets a burst through later.

The clock and the sleep are injected, so the rate is tested with a fake clock, never wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from scanner_agent.storage.ioprio import IoPriority

MB = 1_000_000

#: Seconds of tokens a bucket holds by default: the largest burst after an idle spell.
BURST_SECONDS = 1.0

#: The transfer gate's bucket is smaller: a quarter of a second at the rate in force.
GATE_BURST_SECONDS = 0.25


class Stop(Protocol):
    """What a bucket waits on: ``threading.Event`` (a set event ends every wait at once)."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def is_set(self) -> bool: ...


class TokenBucket:
    """At most ``rate`` bytes a second on average, in bursts of at most ``burst_seconds`` worth.

    ``take(n)`` counts ``n`` bytes against the bucket and, when that leaves it in debt, waits the
    debt off (a chunk larger than the bucket is let through and repaid afterwards, so the long-run
    rate holds for any chunk size). It returns False once ``stop`` is set (a stop request also
    ends the wait), else True. ``rate`` None or <= 0 means no limit. Thread-safe: several readers
    share one rate, each waiting its own share of the debt.

    The wait is ``stop.wait`` unless a ``sleep`` is injected (tests, with a fake ``clock``).
    """

    def __init__(
        self,
        rate: float | None,
        *,
        stop: Stop | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        burst_seconds: float = BURST_SECONDS,
    ) -> None:
        self.stop: Stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._sleep = sleep if sleep is not None else self.stop.wait
        self._burst = burst_seconds
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = clock()
        #: Seconds spent waiting in ``take`` so far (all threads).
        self.waited = 0.0
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Change the rate (bytes/s; None or <= 0: unlimited). Tokens earned are kept, capped at
        the new burst; a debt is kept too, and repaid at the new rate. Leaving "unlimited" starts
        with a full bucket."""
        with self._lock:
            self._refill()
            was_unlimited = self._rate is None
            self._rate = rate if rate is not None and rate > 0 else None
            if self._rate is not None:
                cap = self._rate * self._burst
                self._tokens = cap if was_unlimited else min(self._tokens, cap)

    def _refill(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._tokens = min(self._rate * self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, n: int) -> bool:
        """Count ``n`` bytes and wait until they are allowed; False when stopped (go no further)."""
        with self._lock:
            self._refill()
            if self._rate is None:
                return not self.stop.is_set()
            self._tokens -= n
            delay = -self._tokens / self._rate
        if delay > 0:
            self._sleep(delay)
            with self._lock:
                self.waited += delay
        return not self.stop.is_set()


class TransferGate:
    """The rate policy of one agent's transfers, and the I/O priority of the threads that do them.

    ``max_rate``/``scanning_rate`` are bytes per second (None: unlimited). ``scanning(True)`` is
    called by whoever watches the scanner's folder while a scan there is growing.
    """

    def __init__(
        self,
        max_rate: float | None = None,
        *,
        scanning_rate: float | None = None,
        yield_while_scanning: bool = True,
        io_priority: IoPriority | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.max_rate = max_rate
        self.scanning_rate = scanning_rate
        self.yield_while_scanning = yield_while_scanning
        self.io_priority = io_priority
        self._scanning = False
        self.bucket = TokenBucket(max_rate, clock=clock, sleep=sleep, burst_seconds=GATE_BURST_SECONDS)
        self.bytes_taken = 0
        self._clock = clock
        self._growing: Callable[[], Mapping[Any, float]] | None = None
        self._written_lately: Callable[[], bool] | None = None
        self._stall_seconds = float("inf")
        self._on_stall: Callable[[object, float], None] | None = None
        self._stalled: set[object] = set()

    def follow(
        self,
        growing: Callable[[], Mapping[Any, float]],
        *,
        stall_seconds: float = float("inf"),
        on_stall: Callable[[object, float], None] | None = None,
        written_lately: Callable[[], bool] | None = None,
    ) -> None:
        """Take the "a scan is growing" signal from ``growing()`` (scan -> clock time first seen
        growing, e.g. ``ScanWatcher.growing``); a scan growing longer than ``stall_seconds`` is
        reported once to ``on_stall(scan, seconds)``. ``written_lately()`` (e.g.
        ``ScanWatcher.written_lately``), when given, counts as scanning too: it says so the moment
        a scanner starts writing, before ``growing()`` can tell which scan it is."""
        self._growing, self._stall_seconds, self._on_stall = growing, stall_seconds, on_stall
        self._written_lately = written_lately

    def poll(self) -> None:
        """Ask the signal now: set the rate, and report scans that have grown too long (each once)."""
        if self._growing is None:
            return
        growing = self._growing()
        self.scanning(bool(growing) or (self._written_lately is not None and self._written_lately()))
        now = self._clock()
        for scan, since in growing.items():
            if now - since >= self._stall_seconds and scan not in self._stalled:
                self._stalled.add(scan)
                if self._on_stall is not None:
                    self._on_stall(scan, now - since)
        self._stalled &= set(growing)  # bounded; a scan that settles and grows again is new

    @property
    def is_scanning(self) -> bool:
        return self._scanning

    def current_rate(self) -> float | None:
        """The cap in force now: the lower of the configured cap and, while scanning, the scanning rate."""
        if self._scanning and self.yield_while_scanning and self.scanning_rate:
            return min(self.scanning_rate, self.max_rate or self.scanning_rate)
        return self.max_rate

    def scanning(self, growing: bool) -> None:
        """Say whether a scan in the watch folder is still being written (the rate follows at once)."""
        if growing != self._scanning:
            self._scanning = growing
            self.bucket.set_rate(self.current_rate())

    def take(self, n: int) -> None:
        """Called by the copy engine's reader before reading ``n`` bytes."""
        self.poll()
        self.bucket.take(n)
        self.bytes_taken += n

    @property
    def seconds_waited(self) -> float:
        """Seconds the transfers have been held back so far."""
        return self.bucket.waited

    def enter_transfer_thread(self) -> None:
        """Called first in every thread that reads or writes a transfer's files."""
        if self.io_priority is not None:
            self.io_priority.apply_quietly()

    def __call__(self, path: Path, copied: int) -> None:
        """A ``ChunkHook`` that does nothing: the copy engine takes the gate where it takes its hook."""
