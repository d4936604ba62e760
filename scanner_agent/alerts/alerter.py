"""The ``Alerter``: sends each ``Alert`` to every channel (Slack, e-mail), deduplicated, never lost.

A channel that fails does not stop the others or the transfer that raised the alert: the alert is
kept in the outbox and ``retry_pending()`` delivers it later. The same alert is not repeated on a
channel within ``repeat_after_seconds`` (the record lives in the outbox, so a restart does not
re-spam); a recovery is announced once. Where each problem's message landed is kept too (the
outbox's ``alert_ref``), so its recovery closes that very message: Slack updates it and replies in
its thread, e-mail answers it (``In-Reply-To``). What an alert says is ``core.alerts``; how it looks
on each channel is ``alerts.slack`` and ``alerts.email``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from scanner_agent.alerts.channel import AlertDeliveryError, Channel, Original, Ref
from scanner_agent.core.alerts import Alert

if TYPE_CHECKING:
    from scanner_agent.journal import AlertOutbox

log = logging.getLogger(__name__)


class Alerter:
    """Sends each alert to every channel, with dedupe and an outbox for the ones that failed.

    ``send`` never raises. A channel that has failed and is waiting for its retry time is not
    tried again for every new alert (each try could cost a full timeout during a burst); new
    alerts for it go straight to the outbox and ``retry_pending`` delivers them in order.
    """

    def __init__(
        self,
        channels: list[Channel],
        outbox: AlertOutbox | None,
        *,
        repeat_after_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
        retry_base_seconds: float = 60,
        retry_max_seconds: float = 1800,
        attach_label: bool = False,
    ) -> None:
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise ValueError(f"alert channel names must be unique, got {names}")
        self.channels = list(channels)
        self.outbox = outbox
        self.repeat_after_seconds = repeat_after_seconds
        self.clock = clock
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        #: ``[alerts] attach_label``: without it no label picture leaves the agent (patient identifiers).
        self.attach_label = attach_label
        self._lock = threading.Lock()
        self._retry_lock = threading.Lock()
        self._inflight: set[tuple[str, str]] = set()
        self._sent_here: dict[tuple[str, str], float] = {}  # used only without an outbox
        self._refs_here: dict[tuple[str, str], Original] = {}  # idem

    # -- public

    def send(self, alert: Alert) -> dict[str, str]:
        """Send to every channel: name -> "sent" | "suppressed" | "queued" ("failed" without an outbox)."""
        if alert.label_png is not None and not self.attach_label:
            alert = dataclasses.replace(alert, label_png=None)  # not sent, not kept in the outbox either
        if alert.recovery and "Resolved" not in alert.details:
            # When it cleared, said once here so a queued recovery still tells the real time.
            when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(self.clock()))
            alert = dataclasses.replace(alert, details={**alert.details, "Resolved": when})
        result: dict[str, str] = {}
        for channel in self.channels:
            try:
                result[channel.name] = self._send_one(channel, alert)
            except Exception:  # an alert must never break the transfer that raised it
                log.exception("Alert %s on %s: unexpected failure", alert.key(), channel.name)
                result[channel.name] = "failed"
        return result

    def retry_pending(self) -> int:
        """Resend queued alerts that are due; returns how many were delivered."""
        if self.outbox is None:
            return 0
        if not self._retry_lock.acquire(blocking=False):
            return 0  # a retry round is already running; two would send the same alert twice
        try:
            return self._retry_due()
        except Exception:
            log.exception("Retrying queued alerts failed")
            return 0
        finally:
            self._retry_lock.release()

    def check(self) -> list[str]:
        """Verify each channel without sending; problems are prefixed with the channel's name."""
        problems: list[str] = []
        for channel in self.channels:
            try:
                problems += [f"{channel.name}: {p}" for p in channel.check()]
            except Exception as exc:
                problems.append(f"{channel.name}: check failed: {type(exc).__name__}")
        return problems

    # -- one channel

    def _send_one(self, channel: Channel, alert: Alert) -> str:
        now = self.clock()
        slot = (alert.key(), channel.name)
        with self._lock:
            if slot in self._inflight:  # another thread is sending this very alert right now
                return "suppressed"
            if self._suppressed(alert, channel.name, now):
                log.debug("Alert %s on %s suppressed (sent recently)", alert.key(), channel.name)
                return "suppressed"
            self._inflight.add(slot)
        try:
            if self.outbox is not None:
                if self.outbox.pending_id(alert.key(), channel.name) is not None:
                    return "queued"  # already waiting for this channel; don't queue it twice
                if self._channel_backing_off(channel.name, now):
                    self.outbox.enqueue(
                        alert,
                        channel.name,
                        "channel failed recently; waiting to retry",
                        now=now,
                        next_try=self._backoff_until(channel.name, now),
                    )
                    return "queued"
            try:
                self._deliver(channel, alert)
            except Exception as exc:
                return self._failed(channel, alert, exc, now)
            self._mark_sent(alert.key(), channel.name, self.clock())
            log.info("Alert sent via %s: %s", channel.name, alert.title)
            return "sent"
        finally:
            with self._lock:
                self._inflight.discard(slot)

    def _failed(self, channel: Channel, alert: Alert, exc: Exception, now: float) -> str:
        reason = (
            str(exc) if isinstance(exc, AlertDeliveryError) else f"{type(exc).__name__} in {channel.name}"
        )
        if self.outbox is None:
            log.error("Alert %s not delivered via %s: %s", alert.key(), channel.name, reason)
            return "failed"
        self.outbox.enqueue(alert, channel.name, reason, now=now, next_try=now + self._delay(1))
        log.warning("Alert %s not delivered via %s: %s; queued for retry", alert.key(), channel.name, reason)
        return "queued"

    def _suppressed(self, alert: Alert, channel: str, now: float) -> bool:
        """Same alert within the window, or a recovery already announced for this episode."""
        recovery_key = alert.recovery_key()
        problem_at = self._last_sent(alert.problem_key(), channel)
        recovered_at = self._last_sent(recovery_key, channel)
        if alert.recovery:
            # Once per episode: a new problem alert after the last recovery opens a new one.
            return recovered_at is not None and (problem_at is None or recovered_at >= problem_at)
        if problem_at is None:
            return False
        if recovered_at is not None and recovered_at >= problem_at:
            return False  # it was resolved since; this is a new occurrence
        return now - problem_at < self.repeat_after_seconds

    # -- retrying

    def _retry_due(self) -> int:
        assert self.outbox is not None
        now = self.clock()
        by_name = {c.name: c for c in self.channels}
        broken: set[str] = set()
        delivered = 0
        for item_id, channel_name, alert, created in self.outbox.due_with_created(now):
            channel = by_name.get(channel_name)
            if channel is None:
                self.outbox.failed_again(
                    item_id, f"channel {channel_name!r} is not configured", now + self.retry_max_seconds
                )
                continue
            if channel_name in broken:  # it just failed; don't spend another timeout on it now
                self.outbox.failed_again(
                    item_id,
                    "channel failed again during this retry round",
                    self._backoff_until(channel_name, now),
                    count=False,
                )
                continue
            if self._superseded(alert, channel_name, created):
                self.outbox.delivered(item_id)
                continue
            late = dict(alert.details)
            late.setdefault("Raised", time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(created)))
            try:
                self._deliver(channel, dataclasses.replace(alert, details=late), remember=alert)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, AlertDeliveryError) else type(exc).__name__
                attempts = self.outbox.attempts(item_id) + 1
                self.outbox.failed_again(item_id, reason, now + self._delay(attempts))
                broken.add(channel_name)
                log.warning(
                    "Queued alert %s still not delivered via %s: %s", alert.key(), channel_name, reason
                )
                continue
            self._mark_sent(alert.key(), channel_name, self.clock())
            self.outbox.delivered(item_id)
            delivered += 1
            log.info("Queued alert delivered via %s: %s", channel_name, alert.title)
        return delivered

    def _superseded(self, alert: Alert, channel: str, created: float) -> bool:
        """Skip a queued alert if the same one, or its recovery, was delivered after it was queued."""
        sent_at = self._last_sent(alert.key(), channel)
        if sent_at is not None and sent_at >= created:
            return True
        if not alert.recovery:
            recovered_at = self._last_sent(alert.recovery_key(), channel)
            return recovered_at is not None and recovered_at >= created
        return False

    def _delay(self, attempts: int) -> float:
        return min(self.retry_base_seconds * 2.0 ** max(0, attempts - 1), self.retry_max_seconds)

    def _channel_backing_off(self, channel: str, now: float) -> bool:
        assert self.outbox is not None
        until = self.outbox.next_try_for(channel)
        return until is not None and until > now

    def _backoff_until(self, channel: str, now: float) -> float:
        assert self.outbox is not None
        until = self.outbox.next_try_for(channel)
        return until if until is not None and until > now else now + self.retry_base_seconds

    # -- answering the first message

    def _deliver(self, channel: Channel, alert: Alert, *, remember: Alert | None = None) -> None:
        """Send on one channel: a recovery answers its problem's first message there when it is
        known; a problem's landing place is remembered for its recovery (``remember``: the words to
        keep, when what is sent carries extras such as "Raised")."""
        original = self._original(alert, channel.name) if alert.recovery else None
        # Only a recovery with a known original passes it: a channel written before references
        # (a plain ``send(alert)``) still works for everything else.
        ref = channel.send(alert, original=original) if original is not None else channel.send(alert)
        if not alert.recovery and isinstance(ref, dict) and ref:
            self._remember(alert.problem_key(), channel.name, ref, remember or alert)
        elif original is not None:
            self._forget(alert.problem_key(), channel.name)  # closed: the reference is no longer needed

    def _original(self, alert: Alert, channel: str) -> Original | None:
        if self.outbox is None:
            return self._refs_here.get((alert.problem_key(), channel))
        try:
            found = self.outbox.ref_for(alert.problem_key(), channel)
        except Exception:  # an unreadable reference must not cost the recovery itself
            log.exception(
                "Alert %s: reference to the original message on %s unreadable", alert.key(), channel
            )
            return None
        return None if found is None else Original(found[0], found[1])

    def _remember(self, key: str, channel: str, ref: Ref, alert: Alert) -> None:
        if self.outbox is None:
            self._refs_here[(key, channel)] = Original(dict(ref), alert)
            return
        try:
            self.outbox.record_ref(key, channel, ref, alert, self.clock())
        except Exception:  # delivered already: a lost reference only makes the recovery a new message
            log.exception("Alert %s: could not record where it landed on %s", key, channel)

    def _forget(self, key: str, channel: str) -> None:
        if self.outbox is None:
            self._refs_here.pop((key, channel), None)
            return
        try:
            self.outbox.forget_ref(key, channel)
        except Exception:  # harmless: the row is overwritten by the next occurrence anyway
            log.exception("Alert %s: could not drop its reference on %s", key, channel)

    # -- sent records

    def _last_sent(self, key: str, channel: str) -> float | None:
        if self.outbox is not None:
            return self.outbox.last_sent(key, channel)
        return self._sent_here.get((key, channel))

    def _mark_sent(self, key: str, channel: str, at: float) -> None:
        if self.outbox is not None:
            self.outbox.record_sent(key, channel, at)
        else:
            self._sent_here[(key, channel)] = at
