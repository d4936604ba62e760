"""The transfer gate's token bucket and its "a scan is growing" rate, on a fake clock (no wall time)."""

from __future__ import annotations

import pytest

from scanner_agent.storage import TransferGate
from scanner_agent.storage.throttle import BURST_SECONDS, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@pytest.mark.parametrize("chunk", [64 << 10, 8 << 20, 64 << 20], ids=["64k", "8M", "64M-bigger-than-bucket"])
@pytest.mark.parametrize("mb_per_s", [5, 50, 400])
def test_bucket_holds_the_rate_within_5_percent(chunk: int, mb_per_s: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(mb_per_s * 1e6, clock=clock, sleep=clock.sleep)
    total, start = 0, clock.now
    while total < 2_000_000_000:
        bucket.take(chunk)
        total += chunk
        clock.now += 1e-5  # the copy's own work between chunks
    # A new bucket starts full (BURST_SECONDS' worth goes at once, by design); the rest is paced.
    rate = (total - mb_per_s * 1e6 * BURST_SECONDS) / (clock.now - start)
    assert abs(rate / (mb_per_s * 1e6) - 1) <= 0.05, rate


def test_unlimited_never_sleeps() -> None:
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    for _ in range(1000):
        assert bucket.take(8 << 20)  # no wait: True (not stopped)
    assert clock.now == 1000.0


def test_an_idle_spell_allows_at_most_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10e6, clock=clock, sleep=clock.sleep)
    clock.now += 3600  # an hour without copies
    start = clock.now
    for _ in range(100):
        bucket.take(1_000_000)
    assert clock.now - start >= (100e6 - 10e6 * BURST_SECONDS) / 10e6 * 0.99


def test_gate_slows_while_a_scan_grows_and_returns_to_full_speed() -> None:
    clock = FakeClock()
    growing: dict[str, float] = {}
    gate = TransferGate(None, scanning_rate=50e6, clock=clock, sleep=clock.sleep)
    gate.follow(lambda: growing)
    gate.take(8 << 20)
    assert clock.now == 1000.0 and gate.current_rate() is None  # nothing growing: full speed

    growing["scan.svs"] = clock.now
    start = clock.now
    for _ in range(125):  # 1 GB at 50 MB/s
        gate.take(8 << 20)
    assert gate.is_scanning
    assert abs(125 * (8 << 20) / (clock.now - start) / 50e6 - 1) <= 0.05

    growing.clear()  # the watcher's window passed without a change
    before = clock.now
    gate.take(8 << 20)
    assert clock.now == before and not gate.is_scanning


def test_a_write_heard_before_the_scan_is_named_slows_the_gate_at_once() -> None:
    """The watcher hears a scanner's first write a tick before ``growing()`` names the scan: the
    gate takes ``written_lately`` as scanning too, so not a tick's worth of reads goes at full speed."""
    clock = FakeClock()
    written = [False]
    gate = TransferGate(None, scanning_rate=50e6, clock=clock, sleep=clock.sleep)
    gate.follow(lambda: {}, written_lately=lambda: written[0])
    gate.take(8 << 20)
    assert not gate.is_scanning

    written[0] = True
    gate.take(8 << 20)
    assert gate.is_scanning and gate.current_rate() == 50e6

    written[0] = False  # nothing named and nothing written since: full speed again
    gate.poll()
    assert not gate.is_scanning and gate.current_rate() is None


def test_scanning_rate_never_raises_a_lower_cap() -> None:
    gate = TransferGate(20e6, scanning_rate=50e6)
    gate.scanning(True)
    assert gate.current_rate() == 20e6


def test_yield_while_scanning_false_ignores_the_scanner() -> None:
    gate = TransferGate(None, scanning_rate=50e6, yield_while_scanning=False)
    gate.scanning(True)
    assert gate.current_rate() is None


def test_a_scan_that_grows_forever_stays_throttled_and_is_reported_once() -> None:
    clock = FakeClock()
    stalls: list[tuple[object, float]] = []
    gate = TransferGate(None, scanning_rate=50e6, clock=clock, sleep=clock.sleep)
    gate.follow(
        lambda: {"forever.svs": 1000.0}, stall_seconds=6 * 3600, on_stall=lambda s, t: stalls.append((s, t))
    )
    copied = 0
    while clock.now < 1000.0 + 7 * 3600:
        gate.take(8 << 20)  # nothing starves: every chunk goes through, just slower
        copied += 8 << 20
        clock.now += 60  # other work between chunks
        gate.poll()
    assert gate.is_scanning and gate.current_rate() == 50e6
    assert copied > 0
    assert len(stalls) == 1 and stalls[0][0] == "forever.svs" and stalls[0][1] >= 6 * 3600


def test_a_stop_ends_the_wait_and_take_says_so() -> None:
    """The background fixity check waits on the daemon's stop event: a stop ends the wait at once."""
    import threading

    stop = threading.Event()
    bucket = TokenBucket(1.0, stop=stop)  # 1 byte/s: the next take would wait ~a day
    assert bucket.take(1)
    stop.set()
    assert bucket.take(100_000) is False


def test_a_rate_change_keeps_the_debt() -> None:
    """A chunk taken at the fast rate is repaid before the slow rate lets more through."""
    clock = FakeClock()
    bucket = TokenBucket(100e6, clock=clock, sleep=clock.sleep, burst_seconds=0.25)
    bucket.take(25_000_000)  # the full bucket: no wait
    assert clock.now == 1000.0
    bucket.set_rate(10e6)
    bucket.take(10_000_000)
    assert clock.now == pytest.approx(1001.0)
    assert bucket.waited == pytest.approx(1.0)


def test_zero_or_negative_rate_is_unlimited() -> None:
    clock = FakeClock()
    for rate in (0, -5.0):
        assert TokenBucket(rate, clock=clock, sleep=clock.sleep).take(1 << 30)
    assert clock.now == 1000.0
