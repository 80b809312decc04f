"""The durable outbox: alert transitions wait in a Redis stream until each notifier has
taken them.

When the worker decides a transition (an incident fires or resolves) it writes the
metric's state hash and then appends the transition to the outbox stream ``Poutbox``
(see :mod:`cliffwatch.metrics.keys`). Delivery reads the stream, never the decision: a
worker killed between deciding and delivering leaves the entry in the stream, and
whoever leads next delivers it.

Each notifier is a *channel* with its own consumer group on the stream, so Slack and
PagerDuty progress independently: each reads its entries in order, and a failure holds
back only that channel (capped exponential backoff, :data:`RETRY_MIN_S` doubling to
:data:`RETRY_MAX_S`). An entry is acknowledged in a channel's group only after the
notifier took it and the state hash recorded ``sent:<channel>:<state>``; until then it
stays in the group's pending list and is read again after a restart. A refusal that
retrying cannot fix (PagerDuty 400 *invalid event*, any other 4xx except 429, a Slack
``ok: false`` that is not transient) is logged as an error and the entry dropped
(recorded as ``sent:<channel>:<state> = dropped``).

Duplicates: before sending, a channel checks the state hash; an entry whose ``sent:`` flag
is already set (sent, but the worker died before acknowledging) is acknowledged without
sending. So a send is repeated only if the worker dies between the notifier's answer and
the write of that flag, once per such crash. PagerDuty folds the repeat into the same
incident (same ``dedup_key``); Slack, which has no idempotency key, shows one duplicate
message.

Reminders (an incident still firing, see :meth:`Outbox.append`) are entries of kind
``reminder``: a channel whose notifier has a ``remind(alert, memo)`` method sends them,
only while that incident is still the open one; they set no ``sent:`` flag, so a crash
at the wrong moment may repeat one.

Quiet hours (:mod:`cliffwatch.alerting.quiet`) take part through two hooks: :attr:`Outbox.hold`
may keep an entry's Slack channels out of the stream (the alert waits for the digest), and
entries of kind ``digest`` are sent by :attr:`Outbox.digest`, through the channel's
notifier, with the same order, backoff and fencing as any entry.

A channel is named after its notifier: ``slack`` and ``pagerduty`` (the rules' default
route), ``slack:<channel>`` and ``pagerduty:<service>`` (a rule's own); each is its own
consumer group, so one Slack channel or PagerDuty service failing holds back no other.

Two ways to drive it: :meth:`Outbox.deliver_due` delivers in the calling thread (the
worker on simulated time), :meth:`Outbox.start` runs one daemon thread per channel, so a
Slack that hangs or rate-limits never delays the page.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ..errors import CliffwatchError, DeliveryError
from ..metrics.store import Store
from .alert import Alert
from .notifiers import Notifier

log = logging.getLogger("cliffwatch.outbox")

RETRY_MIN_S, RETRY_MAX_S = 2.0, 60.0
"""A channel that failed waits RETRY_MIN_S, then twice as long after each failure, at
most RETRY_MAX_S."""
MAXLEN = 10_000
"""The stream is trimmed to about this many entries (delivered or not)."""
READ_COUNT = 16
PAGER_HEAD_START_S = 1.0
"""With delivery threads, another channel waits at most this long for the pager to have
tried an entry first (not at all while the pager is backing off), so the page usually
goes out first; the pager never waits for anyone."""
PAGER = "pagerduty"
SLACK = "slack"
CONSUMER = "leader"
"""Every worker reads as the same consumer: only the leader reads, and a new leader
finds its predecessor's unacknowledged entries as its own."""

# A refusal retrying cannot fix: a 4xx other than 429, or a Slack ok:false answer that
# is not one of the transient errors slack-sdk already retried.
_PERMANENT = re.compile(
    r"\bHTTP 4(?!29)\d\d\b"
    r"|\bHTTP 200, error '(?!internal_error|fatal_error|service_unavailable|request_timeout)"
)


class Fence(Protocol):
    """What the outbox needs of the leader election (:class:`~.leader.Leader`)."""

    @property
    def epoch(self) -> int:
        """This worker's fencing epoch."""
        ...

    def holds(self) -> bool:
        """True while this worker leads."""
        ...

    def check(self, seen: int | str | None = None) -> None:
        """Raise LostLeadership unless this worker leads and ``seen`` is not newer."""
        ...


def is_pager(channel: str) -> bool:
    """True for a PagerDuty channel (``pagerduty`` or ``pagerduty:<service>``)."""
    return channel == PAGER or channel.startswith(PAGER + ":")


def is_slack(channel: str) -> bool:
    """True for a Slack channel (``slack`` or ``slack:<channel>``)."""
    return channel == SLACK or channel.startswith(SLACK + ":")


def is_permanent(error: DeliveryError) -> bool:
    """True when retrying ``error`` cannot help (the service refused the request)."""
    flag = getattr(error, "permanent", None)
    if flag is not None:
        return bool(flag)
    return bool(_PERMANENT.search(str(error)))


class Outbox:
    """The outbox stream and one delivery channel per notifier.

    :param store: where the stream and the state hashes live.
    :param notifiers: ``{"slack": ..., "pagerduty": ...}``; each is a channel.
    :param clock: epoch seconds, for backoff (tests pass their own).
    :param fence: the leader election; ``None``: this worker is the only one.

    Redis errors while delivering are logged and retried with the channel's backoff;
    :meth:`append` and :meth:`requeue` raise :class:`~cliffwatch.errors.StoreError`.
    """

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        *,
        clock: Callable[[], float] = time.time,
        fence: Fence | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.fence = fence
        self._record_lock = threading.Lock()
        self._tried = threading.Condition()  # notified when a channel tried an entry
        self.channels = {
            name: _Channel(self, name, notifier) for name, notifier in notifiers.items()
        }
        self._opened = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_delivery: Callable[[str, str], None] | None = None
        """Called with (channel, ``sent`` / ``failed`` / ``dropped``) after each try
        (e.g. to count deliveries); it must not raise."""
        self.hold: Callable[[Alert, Sequence[str], bool], Sequence[str]] | None = None
        """Called by :meth:`append` with (alert, channels, is a reminder): returns the
        channels to queue it for now (the others keep it elsewhere). May raise
        ``StoreError``."""
        self.digest: Callable[[str, Notifier, Mapping[str, str]], None] | None = None
        """Sends an entry of kind ``digest`` (channel name, its notifier, the entry's
        fields); raises DeliveryError as a notifier does."""

    def counted(self, channel: str, outcome: str) -> None:
        """Report one delivery try of ``channel`` to :attr:`on_delivery`."""
        if self.on_delivery is not None:
            self.on_delivery(channel, outcome)

    @property
    def running(self) -> bool:
        """True while the delivery threads run (:meth:`start`)."""
        return bool(self._threads)

    def use(self, notifiers: Mapping[str, Notifier]) -> None:
        """Deliver through ``notifiers`` from now on: a channel kept keeps its progress
        and backoff, a new one starts with the entries appended after it was added."""
        for name in [n for n in self.channels if n not in notifiers]:
            channel = self.channels.pop(name)
            channel.wake.set()
        for name, notifier in notifiers.items():
            if name in self.channels:
                self.channels[name].notifier = notifier
                continue
            self.channels[name] = _Channel(self, name, notifier)
            self._opened = False
            if self._threads:
                self._spawn(self.channels[name])

    @property
    def epoch(self) -> int:
        """The epoch entries are written with (0 without a fence)."""
        return 0 if self.fence is None else self.fence.epoch

    def open(self) -> None:
        """Create each channel's consumer group (once). Raises ``StoreError``."""
        if not self._opened:
            for name in self.channels:
                self.store.outbox_group(name)
            self._opened = True

    def append(
        self, alert: Alert, channels: Sequence[str], *, reminder: bool = False
    ) -> str | None:
        """Queue ``alert`` for ``channels``; return the entry id (``None`` if there is no
        channel to send it to). With ``reminder``, the entry reminds that the incident
        of ``alert`` is still firing. Raises ``StoreError``."""
        channels = [c for c in channels if c in self.channels]
        if channels and self.hold is not None:
            channels = [c for c in self.hold(alert, channels, reminder) if c in channels]
        if not channels:
            return None
        self.open()
        entry_id = self.store.outbox_add(
            {
                "metric": alert.metric,
                "state": alert.state,
                "incident_id": alert.incident_id,
                "epoch": str(self.epoch),
                "channels": ",".join(channels),
                "alert": json.dumps(alert.to_json()),
                **({"kind": "reminder"} if reminder else {}),
            },
            MAXLEN,
        )
        for name in channels:
            self.channels[name].wake.set()
        return entry_id

    def append_digest(self, channel: str, fields: Mapping[str, str]) -> str | None:
        """Queue a ``digest`` entry (``fields``, sent by :attr:`digest`) for one
        channel; ``None`` if there is no such channel. Raises ``StoreError``."""
        if channel not in self.channels:
            return None
        self.open()
        entry_id = self.store.outbox_add(
            {**fields, "kind": "digest", "channels": channel, "epoch": str(self.epoch)}, MAXLEN
        )
        self.channels[channel].wake.set()
        return entry_id

    def requeue(self, alerts: Sequence[tuple[Alert, Sequence[str]]]) -> int:
        """Append again transitions whose state hash says they are not delivered
        everywhere (the worker may have died between writing the state and appending).
        Entries that turn out to be delivered already are skipped when read. Returns how
        many were appended. Raises ``StoreError``."""
        return sum(1 for alert, channels in alerts if self.append(alert, channels))

    def deliver_due(self) -> None:
        """Give every channel whose backoff has passed one go, in this thread (the pager
        first)."""
        self.open_quietly()
        for channel in sorted(self.channels.values(), key=lambda c: not is_pager(c.name)):
            if self._leading():
                channel.step()

    def start(self) -> None:
        """Deliver from one daemon thread per channel until :meth:`stop`."""
        if self._threads:
            return
        self._stop.clear()
        for channel in list(self.channels.values()):
            self._spawn(channel)

    def _spawn(self, channel: _Channel) -> None:
        thread = threading.Thread(
            target=self._loop, args=(channel,), name=f"cliffwatch-{channel.name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the delivery threads, waiting at most ``timeout`` seconds for each (one
        may be in the middle of a send)."""
        self._stop.set()
        for channel in list(self.channels.values()):
            channel.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def open_quietly(self) -> bool:
        """:meth:`open`, logging a Redis error instead of raising it; True if open."""
        try:
            self.open()
        except CliffwatchError as exc:
            log.warning("outbox: %s", exc)
            return False
        return True

    def _leading(self) -> bool:
        return self.fence is None or self.fence.holds()

    def _loop(self, channel: _Channel) -> None:
        while not self._stop.is_set() and self.channels.get(channel.name) is channel:
            if self._leading() and self.open_quietly():
                channel.step()
            wait = min(1.0, max(0.05, channel.retry_at - self.clock()))
            channel.wake.wait(wait)
            channel.wake.clear()

    def tried(self, channel: _Channel, entry_id: str) -> None:
        """Note that ``channel`` has tried entry ``entry_id`` (delivered or not)."""
        with self._tried:
            channel.tried = _stream_id(entry_id)
            self._tried.notify_all()

    def after_pager(self, channel: _Channel, entry_id: str, channels: Sequence[str]) -> None:
        """With delivery threads, let the pager try ``entry_id`` first (waits at most
        :data:`PAGER_HEAD_START_S`)."""
        pagers = [self.channels[c] for c in channels if is_pager(c) and c in self.channels]
        if not self._threads or is_pager(channel.name) or not pagers:
            return
        pager = pagers[0]
        wanted = _stream_id(entry_id)
        with self._tried:
            self._tried.wait_for(
                lambda: pager.tried >= wanted or pager.retry_at > self.clock(),
                timeout=PAGER_HEAD_START_S,
            )

    def record(
        self, metric: str, incident_id: str, channels: Sequence[str], fields: Mapping[str, str]
    ) -> None:
        """Write a delivery's ``sent:`` flag and memo into the state hash, and take the
        transitions delivered everywhere off ``pending``; nothing if the metric's open
        incident is no longer ``incident_id``. Raises ``StoreError``."""
        with self._record_lock:  # channels' threads read-modify-write ``pending``
            st = self.store.get_state(metric)
            if st.get("incident_id") != incident_id:
                return
            st.update(fields)
            targets = [c for c in st.get("channels", "").split(",") if c] or list(channels)
            pending = [
                p
                for p in st.get("pending", "").split(",")
                if p and not all(st.get(f"sent:{c}:{p}") for c in targets)
            ]
            self.store.set_state(metric, {**fields, "pending": ",".join(pending)})


class _Channel:
    """One notifier's progress through the outbox: in order, with its own backoff."""

    def __init__(self, outbox: Outbox, name: str, notifier: Notifier) -> None:
        self.outbox = outbox
        self.name = name
        self.notifier = notifier
        self.retry_at = -float("inf")
        self.backoff = RETRY_MIN_S / 2
        self.wake = threading.Event()
        self.tried = (0, 0)  # id of the last entry tried

    def step(self) -> None:
        """Deliver this channel's entries in order until one fails or none is left;
        after a failure, do nothing until the backoff has passed."""
        if self.outbox.clock() < self.retry_at:
            return
        store = self.outbox.store
        try:
            while True:
                entries = store.outbox_read(self.name, CONSUMER, READ_COUNT, unacked=True)
                if not entries:
                    entries = store.outbox_read(self.name, CONSUMER, READ_COUNT, unacked=False)
                if not entries:
                    break
                for entry_id, fields in entries:
                    outcome = self._deliver(entry_id, fields)
                    if outcome == "fenced":
                        return
                    if outcome == "retry":
                        self._failed()
                        return
                    store.outbox_ack(self.name, entry_id)
        except CliffwatchError as exc:
            log.warning("outbox %s: %s", self.name, exc)
            if "NOGROUP" in str(exc) and self._regroup():
                return
            self._failed()
            return
        self.retry_at, self.backoff = -float("inf"), RETRY_MIN_S / 2

    def _regroup(self) -> bool:
        """Make this channel's group again after Redis lost it (restarted empty): from
        the stream's first entry, so what was appended since is delivered; True if made,
        and the channel then tries again at once. A Redis error is logged (False)."""
        try:
            self.outbox.store.outbox_group(self.name, start="0")
        except CliffwatchError as exc:
            log.warning("outbox %s: %s", self.name, exc)
            return False
        log.warning("outbox %s: the consumer group was gone; made again", self.name)
        self.retry_at, self.backoff = -float("inf"), RETRY_MIN_S / 2
        self.wake.set()
        return True

    def _failed(self) -> None:
        self.backoff = min(self.backoff * 2, RETRY_MAX_S)
        self.retry_at = self.outbox.clock() + self.backoff

    def _deliver(self, entry_id: str, fields: Mapping[str, str]) -> str:
        """Send one entry: ``done`` (acknowledge it), ``retry`` or ``fenced``."""
        channels = fields.get("channels", "").split(",")
        if self.name not in channels:
            return "done"
        self.outbox.after_pager(self, entry_id, channels)
        try:
            return self._send(fields, channels)
        finally:
            self.outbox.tried(self, entry_id)

    def _send(self, fields: Mapping[str, str], channels: Sequence[str]) -> str:
        fence = self.outbox.fence
        if fence is not None:
            try:
                fence.check(fields.get("epoch"))
            except CliffwatchError:
                return "fenced"
        if fields.get("kind") == "digest":
            return self._digest(fields)
        try:
            alert = Alert(**json.loads(fields["alert"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("dropping unreadable outbox entry %r: %s", dict(fields), exc)
            return "done"
        if fields.get("kind") == "reminder":
            return self._remind(alert)
        st = self.outbox.store.get_state(alert.metric)
        current = st.get("incident_id") == alert.incident_id
        flag = f"sent:{self.name}:{alert.state}"
        if current and st.get(flag):
            return "done"  # sent before a crash that came before the acknowledgement
        memo = {k: v for k, v in st.items() if not k.startswith("sent:")} if current else {}
        try:
            update = self.notifier.send(alert, memo)
        except DeliveryError as exc:
            if not is_permanent(exc):
                log.warning(
                    "delivering %s of %s to %s failed: %s",
                    alert.state,
                    alert.metric,
                    self.name,
                    exc,
                )
                self.outbox.counted(self.name, "failed")
                return "retry"
            log.error(
                "dropping %s of %s for %s, refused: %s", alert.state, alert.metric, self.name, exc
            )
            update, sent = {}, "dropped"
        except Exception:  # a notifier bug must not stop delivery of the others
            log.exception("delivering %s of %s to %s failed", alert.state, alert.metric, self.name)
            self.outbox.counted(self.name, "failed")
            return "retry"
        else:
            sent = "1"
        self.outbox.counted(self.name, "sent" if sent == "1" else "dropped")
        self.outbox.record(alert.metric, alert.incident_id, channels, {**update, flag: sent})
        return "done"

    def _digest(self, fields: Mapping[str, str]) -> str:
        """Send a digest entry through :attr:`Outbox.digest`."""
        send = self.outbox.digest
        if send is None:
            log.error("dropping a digest for %s: nothing here sends digests", self.name)
            return "done"
        try:
            send(self.name, self.notifier, fields)
        except DeliveryError as exc:
            if not is_permanent(exc):
                log.warning("digest to %s failed: %s", self.name, exc)
                self.outbox.counted(self.name, "failed")
                return "retry"
            log.error("dropping a digest for %s, refused: %s", self.name, exc)
            self.outbox.counted(self.name, "dropped")
            return "done"
        except CliffwatchError:
            raise  # Redis: the channel backs off and reads the entry again
        except Exception:  # a bug must not stop delivery of the others
            log.exception("digest to %s failed", self.name)
            self.outbox.counted(self.name, "failed")
            return "retry"
        self.outbox.counted(self.name, "sent")
        return "done"

    def _remind(self, alert: Alert) -> str:
        """Send a reminder entry: only while its incident is still the open one, and only
        through a notifier that has ``remind``."""
        st = self.outbox.store.get_state(alert.metric)
        remind = getattr(self.notifier, "remind", None)
        if remind is None or st.get("incident_id") != alert.incident_id:
            return "done"
        if st.get("state") != "firing":
            return "done"  # resolved since: nothing to remind of
        memo = {k: v for k, v in st.items() if not k.startswith("sent:")}
        try:
            remind(alert, memo)
        except DeliveryError as exc:
            if not is_permanent(exc):
                log.warning("reminder of %s to %s failed: %s", alert.metric, self.name, exc)
                self.outbox.counted(self.name, "failed")
                return "retry"
            log.error("dropping reminder of %s for %s, refused: %s", alert.metric, self.name, exc)
            self.outbox.counted(self.name, "dropped")
            return "done"
        except Exception:  # a notifier bug must not stop delivery of the others
            log.exception("reminder of %s to %s failed", alert.metric, self.name)
            self.outbox.counted(self.name, "failed")
            return "retry"
        self.outbox.counted(self.name, "sent")
        return "done"


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``<ms>-<seq>`` as a tuple that sorts as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
