"""Quiet hours: ``notify`` alerts wait for one Slack digest while the window is open.

During the rules' ``[quiet_hours]`` window (:class:`~cliffwatch.rules.config.QuietHours`,
local time of its zone) every Slack delivery of a ``notify`` incident — the firing, the
resolve and the reminders, the "monitoring blind" incident's too — is *held*: written to
the hash ``Pquiet:held`` (see :mod:`cliffwatch.metrics.keys`) instead of the outbox.
``page`` alerts are never held, and an Alertmanager or webhook sink gets every alert at
once (those have their own time-based routing). A held transition stays ``pending`` in
its incident's state hash, so a worker that takes over and queues the undelivered
transitions again holds it again (same field: no duplicate).

When the window is over, the acting worker's next tick (:meth:`QuietHold.flush`) turns
what is held into one ``digest`` entry of the outbox per Slack channel and then forgets
it; that channel's delivery thread posts ONE message (:func:`digest_message`) and marks
the transitions it covered as sent (``sent:<channel>:<state> = digest``). A held alert
survives a worker restart (it is in Redis), and only the leader holds or flushes (the
outbox entries carry its fencing epoch like every other). If the worker dies between
queueing the digest and forgetting what it listed, the next leader queues it again: one
duplicate digest per such crash.

The digest lists each incident once, by what became of it:

- **still open**: it fired (during the window or before it) and is firing now;
- **fired and resolved**: it fired during the window and is over — the summary says
  when it fired, when it resolved and how long it lasted (nobody needs a separate
  "fired" and "resolved" line for a dip that came and went at night);
- **resolved**: it fired before the window (that alert went out) and resolved during it.

After the digest, the incident's next transition is delivered as usual; a resolve then
posts a new message (there is no firing message of its own to update). An incident
whose firing message was posted before the window and that resolved inside it has that
message edited to show the resolve when the digest goes out (no thread reply: the digest
is the one new message).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import DeliveryError
from ..metrics.store import Store
from ..rules.config import NOTIFY, QuietHours
from .alert import Alert
from .leader import LostLeadership
from .notifiers import Notifier, escape_mrkdwn
from .outbox import Outbox, is_slack

log = logging.getLogger("cliffwatch.quiet")

CHECK_EVERY_S = 30.0
"""Outside the window, a worker that held nothing itself looks for held alerts (another
worker's, before a restart or a failover) this often."""
LINES_PER_SECTION = 25
"""A digest lists at most this many incidents per section, then says how many more."""
REMINDER = "reminder"


def _name(alert: Alert, kind: str) -> str:
    return f"{alert.incident_id}|{kind}"


class QuietHold:
    """Holds ``notify`` alerts for Slack during quiet hours and sends the digests.

    :param store: where held alerts are kept (``Pquiet:held``) and states are read.
    :param outbox: whose :attr:`~.outbox.Outbox.hold` and :attr:`~.outbox.Outbox.digest`
        hooks this takes over, and where the digests are queued.
    :param window: the quiet hours; ``None``: nothing is held (alerts held under an
        earlier configuration are still sent as a digest).
    :param clock: epoch seconds.

    :meth:`flush` raises ``StoreError`` (Redis); holding raises ``StoreError`` from the
    outbox's ``append``.
    """

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        window: QuietHours | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.window = window
        self.clock = clock
        self._check_at = -math.inf
        outbox.hold = self.hold
        outbox.digest = self.send_digest

    def active(self, at: float | None = None) -> bool:
        """True while the quiet-hours window is open (at epoch ``at``, default now)."""
        return self.window is not None and self.window.active(self.clock() if at is None else at)

    def hold(self, alert: Alert, channels: Sequence[str], reminder: bool) -> list[str]:
        """The outbox's hook: keep a ``notify`` alert's Slack channels back while the
        window is open; return the channels to queue it for now."""
        if alert.severity != NOTIFY or not self.active():
            return list(channels)
        slack = [c for c in channels if is_slack(c)]
        if not slack:
            return list(channels)
        kind = REMINDER if reminder else alert.state
        entry = {"kind": kind, "channels": slack, "alert": alert.to_json()}
        self.store.hold(_name(alert, kind), json.dumps(entry, allow_nan=False))
        self._check_at = -math.inf  # look again as soon as the window ends
        log.info("quiet hours: %s of %s held for the digest", kind, alert.metric)
        return [c for c in channels if c not in slack]

    def flush(self, now: float | None = None) -> int:
        """Outside the window, queue one digest per Slack channel of everything held and
        forget it; return how many digests were queued. Cheap when there is nothing:
        Redis is asked at most every :data:`CHECK_EVERY_S` seconds unless this worker
        held something; nothing unless this worker leads. Raises ``StoreError``."""
        now = self.clock() if now is None else now
        if self.active(now) or now < self._check_at:
            return 0
        self._check_at = now + CHECK_EVERY_S
        if not self.store.any_held():
            return 0
        try:
            if self.outbox.fence is not None:
                self.outbox.fence.check()
        except LostLeadership as exc:
            log.warning("not sending the quiet-hours digest: %s", exc)
            return 0
        held = self.store.held()
        by_channel: dict[str, list[dict[str, Any]]] = {}
        for name, text in sorted(held.items()):
            try:
                entry = json.loads(text)
                channels = [str(c) for c in entry["channels"]]
                Alert(**entry["alert"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("dropping an unreadable held alert %r: %s", name, exc)
                continue
            for channel in channels:
                by_channel.setdefault(channel, []).append(entry)
        queued = 0
        for channel, entries in by_channel.items():
            zone = self.window.timezone if self.window is not None else "UTC"
            fields = {"items": json.dumps(entries), "timezone": zone, "at": str(int(now))}
            if self.outbox.append_digest(channel, fields) is not None:
                queued += 1
            else:
                log.error("quiet hours: no notifier %r for %d held alerts", channel, len(entries))
        self.store.release(list(held))
        log.info("quiet hours over: %d held alerts in %d digests", len(held), queued)
        return queued

    def send_digest(self, channel: str, notifier: Notifier, fields: Mapping[str, str]) -> None:
        """The outbox's hook for a ``digest`` entry: read what became of each incident,
        post one message through ``notifier`` (which needs a ``post(text, blocks)``
        method, as :class:`~.notifiers.SlackNotifier` has) and mark the transitions it
        covered as sent. Raises DeliveryError when Slack fails, StoreError for Redis."""
        post = getattr(notifier, "post", None)
        if post is None:
            log.error("dropping a digest for %s: the notifier cannot post one", channel)
            return
        try:
            items = json.loads(fields["items"])
            alerts = [(str(e["kind"]), Alert(**e["alert"])) for e in items]
        except (KeyError, TypeError, ValueError) as exc:
            log.error("dropping an unreadable digest for %s: %s", channel, exc)
            return
        metrics = sorted({a.metric for _, a in alerts})
        states = dict(zip(metrics, self.store.get_states(metrics), strict=True))
        digest = summarize(alerts, states)
        if digest.count:  # else only reminders of incidents told of since: say nothing
            post(*digest_message(digest, fields.get("timezone", "UTC")))
        self._edit_in_place(channel, notifier, alerts, states)
        for kind, alert in alerts:
            if kind != REMINDER:
                self.outbox.record(
                    alert.metric,
                    alert.incident_id,
                    [channel],
                    {f"sent:{channel}:{kind}": "digest"},
                )


    def _edit_in_place(
        self,
        channel: str,
        notifier: Notifier,
        alerts: Sequence[tuple[str, Alert]],
        states: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Show the resolve on the firing message of each incident that fired (and was
        posted) before the window and resolved inside it, as outside quiet hours — an
        edit, without the thread reply, so the digest stays the one new message. A
        failed edit is logged (the digest has told)."""
        edit = getattr(notifier, "edit", None)
        if edit is None:
            return
        for kind, alert in alerts:
            st = states.get(alert.metric, {})
            if kind != "resolved" or st.get("incident_id") != alert.incident_id:
                continue
            if st.get(f"sent:{channel}:firing") != "1":
                continue  # its firing was held too: there is no message to edit
            try:
                edit(alert, st)
            except DeliveryError as exc:
                log.warning("could not mark %s resolved in its message: %s", alert.metric, exc)


@dataclass
class Line:
    """One incident in a digest."""

    alert: Alert
    """Its firing alert (or the latest one held)."""
    fired_at: int
    resolved_at: int | None = None
    rate: float = math.nan
    """Events/s now (still open) or at the resolve."""


@dataclass
class Digest:
    """What a digest says, by section (see the module docstring)."""

    still_open: list[Line] = field(default_factory=list)
    fired_and_resolved: list[Line] = field(default_factory=list)
    resolved: list[Line] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.still_open) + len(self.fired_and_resolved) + len(self.resolved)


def summarize(
    held: Sequence[tuple[str, Alert]], states: Mapping[str, Mapping[str, str]]
) -> Digest:
    """Group held ``(kind, alert)`` pairs by incident and put each in its section, using
    ``states`` (metric -> its state hash now) to tell whether it is still open."""
    by_incident: dict[str, dict[str, Alert]] = {}
    for kind, alert in held:
        by_incident.setdefault(alert.incident_id, {})[kind] = alert
    digest = Digest()
    for kinds in sorted(by_incident.values(), key=lambda k: next(iter(k.values())).started_at):
        any_alert = next(iter(kinds.values()))
        st = states.get(any_alert.metric, {})
        current = st.get("incident_id") == any_alert.incident_id
        open_now = current and st.get("state") == "firing"
        resolved = kinds.get("resolved")
        if resolved is None and current and not open_now and st.get("resolved_at"):
            resolved_at: int | None = int(st["resolved_at"])
            rate = float(st.get("rate", "nan"))
        elif resolved is not None:
            resolved_at, rate = resolved.at, resolved.rate
        else:
            resolved_at, rate = None, math.nan
        line_alert = kinds.get("firing") or kinds.get(REMINDER) or any_alert
        line = Line(line_alert, any_alert.started_at, resolved_at, rate)
        if resolved_at is None:
            if not open_now:
                continue  # a reminder of an incident that is over and was told elsewhere
            line.rate = (kinds.get(REMINDER) or line_alert).rate
            digest.still_open.append(line)
        elif "firing" in kinds:
            digest.fired_and_resolved.append(line)
        else:
            digest.resolved.append(line)
    return digest


def _clock(epoch: int, zone: str) -> str:
    """``02:10 CET`` in time zone ``zone`` (UTC if it cannot be loaded here)."""
    try:
        from zoneinfo import ZoneInfo

        return datetime.fromtimestamp(epoch, tz=ZoneInfo(zone)).strftime("%H:%M %Z")
    except (KeyError, ValueError, OSError):
        return datetime.fromtimestamp(epoch, tz=UTC).strftime("%H:%M UTC")


def _minutes(seconds: int) -> str:
    minutes = max(0, round(seconds / 60))
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def _figure(value: float) -> str:
    if not math.isfinite(value):
        return "?"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _describe(line: Line, zone: str, section: str) -> str:
    a = line.alert
    metric = "`" + escape_mrkdwn(a.metric.replace("`", "'")) + "`"
    normal = f"{_figure(a.baseline)}/s normal"
    fired = _clock(line.fired_at, zone)
    if line.resolved_at is None:
        return f"• {metric} down since {fired}: {_figure(line.rate)}/s vs {normal}"
    lasted = _minutes(line.resolved_at - line.fired_at)
    resolved = _clock(line.resolved_at, zone)
    if section == "resolved":
        return (
            f"• {metric} back to {_figure(line.rate)}/s ({normal}) at {resolved},"
            f" after {lasted} down (since {fired})"
        )
    return (
        f"• {metric} fell to {_figure(a.rate)}/s ({normal}) at {fired},"
        f" back at {resolved} after {lasted}"
    )


def digest_message(digest: Digest, zone: str) -> tuple[str, list[dict[str, Any]]]:
    """The plain-text fallback and the Block Kit blocks of a digest (metric names
    escaped; at most :data:`LINES_PER_SECTION` incidents per section)."""
    counts = [
        f"{len(digest.still_open)} still open",
        f"{len(digest.fired_and_resolved)} fired and resolved",
        f"{len(digest.resolved)} resolved",
    ]
    headline = f":crescent_moon: *Quiet hours digest*: {', '.join(counts)}"
    text = headline.replace("*", "")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": _mrkdwn(headline)}]
    sections = (
        ("open", "Still open", digest.still_open),
        ("both", "Fired and resolved during quiet hours", digest.fired_and_resolved),
        ("resolved", "Resolved during quiet hours", digest.resolved),
    )
    for section, title, lines in sections:
        if not lines:
            continue
        shown = [_describe(line, zone, section) for line in lines[:LINES_PER_SECTION]]
        if len(lines) > LINES_PER_SECTION:
            shown.append(f"… and {len(lines) - LINES_PER_SECTION} more")
        blocks.append({"type": "section", "text": _mrkdwn(f"*{title}*\n" + "\n".join(shown))})
    return text, blocks


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text[:3000], "verbatim": True}
