"""When has a scan settled: the settle-window decision, fed fingerprints and clock values.

A scanner writes a slide in place over minutes, so a unit is ready only once its fingerprint
(sizes and mtimes) has stayed the same for ``settle_seconds``. A writer closing a file shortens
the window to a quarter; any change restarts it at full length. After the window, the caller
takes a fresh fingerprint (``confirm``) and asks its other probes (the format's own "finished"
flag, open writers); when one of them says "not yet" it calls ``hold`` so the unit is not looked
at again for another window. The tracker never reads the disk or a clock itself: the caller
passes ``now`` and the fingerprints, which keeps every window exact in tests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # what is tracked (a scan unit)
F = TypeVar("F")  # its fingerprint; None means "vanished or unreadable"


@dataclass
class _Entry(Generic[F]):
    fingerprint: F | None
    changed_at: float  # clock value the fingerprint was last seen to change (or first seen)
    closed_hint: bool = False
    blocked_until: float = 0.0  # no check before this: a probe said "not yet"


class SettleTracker(Generic[K, F]):
    """Remembers the units being written and says which have been unchanged for the window.

    Not thread-safe: one thread owns it.
    """

    def __init__(self, settle_seconds: float) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        self.settle_seconds = settle_seconds
        self._entries: dict[K, _Entry[F]] = {}

    def observe(self, key: K, fingerprint: F | None, now: float) -> None:
        """Record the unit's fingerprint; a new unit or a change (re)starts its full window."""
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(fingerprint, now)
        elif fingerprint != entry.fingerprint:
            self._changed(entry, fingerprint, now)

    def hint_closed(self, key: K) -> None:
        """A writer closed a file of the unit: the window becomes a quarter of the full one.

        The unchanged-fingerprint check still applies, and any later change cancels the hint.
        The unit must have been observed first.
        """
        entry = self._entries[key]
        entry.closed_hint = True
        entry.blocked_until = 0.0  # the writer a probe saw holding it open may be the one that closed

    def due(self, now: float, keys: Iterable[K] | None = None) -> list[K]:
        """The units (of ``keys``, default all) whose window has passed and that are not held.

        These are the only ones worth a fresh fingerprint and the probes.
        """
        out: list[K] = []
        for key in self._entries if keys is None else keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if now >= entry.changed_at + self._window(entry) and now >= entry.blocked_until:
                out.append(key)
        return out

    def confirm(self, key: K, fingerprint: F | None, now: float) -> bool:
        """True if a fresh fingerprint of a due unit equals the recorded one.

        Otherwise (changed, or ``None`` for vanished) the new value is recorded and the full
        window starts again at ``now``.
        """
        entry = self._entries[key]
        if fingerprint is None or fingerprint != entry.fingerprint:
            self._changed(entry, fingerprint, now)
            return False
        return True

    def hold(self, key: K, now: float) -> None:
        """A probe said "not finished yet": do not check the unit again for another window."""
        entry = self._entries[key]
        entry.blocked_until = now + self._window(entry)

    def fingerprint(self, key: K) -> F | None:
        """The fingerprint last recorded for the unit (None if unknown or vanished)."""
        entry = self._entries.get(key)
        return entry.fingerprint if entry else None

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def pending(self) -> list[K]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _window(self, entry: _Entry[F]) -> float:
        return self.settle_seconds / 4 if entry.closed_hint else self.settle_seconds

    @staticmethod
    def _changed(entry: _Entry[F], fingerprint: F | None, now: float) -> None:
        entry.fingerprint = fingerprint
        entry.changed_at = now
        entry.closed_hint = False
        entry.blocked_until = 0.0
