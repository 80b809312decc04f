"""The detector worker: every second, judge the closed seconds of every watched metric.

``Worker.run()`` loops ``tick(now)`` once a second until told to stop; ``tick`` reads the
seconds that closed since the last tick (older than ``watermark`` seconds, so late
flushes are in), feeds them to the :class:`~cliffwatch.rules.detector.Detector` and
turns its transitions into incidents. Tests and the demo call ``tick`` with their own
clock.

On start the worker gives each metric back what it learnt before (a snapshot stored
in Redis every few minutes), refills the detector's per-second history from Redis, and
catches up on the seconds since; open incidents stay open and are not paged again.
Without a snapshot a metric learns from whatever history Redis still has and is
*warming up* (not judged) until it has seen ``warmup_minutes`` of data.

An incident that opens inside a silence (``cliffwatch silence add``) is recorded but not
delivered; see :mod:`cliffwatch.alerting.silences`.

Several workers may run against one Redis, and they split the metrics: ``run()`` takes
part in the shard leases of :mod:`cliffwatch.alerting.shards`, and a worker judges (and
opens and resolves the incidents of) only the metrics of the shards it holds. When it
gains shards it restores their metrics from their snapshots and history and compares
them with their open incidents; at the whole minute after a shard is assigned elsewhere
it saves their snapshots and hands the shard over. ``run()`` also takes part in a leader
election (:mod:`cliffwatch.alerting.leader`): the leader alone delivers (through the
outbox, :mod:`cliffwatch.alerting.outbox`, one delivery thread per notifier), watches for
"monitoring blind" and writes the heartbeat. A worker driven by ``tick()`` without a
``leader`` or ``shards`` acts alone: it judges every metric and delivers in the ticking
thread.

Where an incident goes follows its rule: its own ``slack_channel`` and PagerDuty
service, else the ``[slack]`` and ``[pagerduty]`` defaults (:class:`~.incidents.Route`).
During the rules' ``[quiet_hours]`` the Slack alerts of ``notify`` incidents are held
and sent as one digest when the window is over (:mod:`cliffwatch.alerting.quiet`).

While an incident is still firing, the leader reminds Slack (never the pager) every
``[defaults] reminder`` of the rules (30 min unless set; ``"0"``: never); see
:meth:`~cliffwatch.alerting.incidents.Incidents.remind`.

Dead-man's switch: after every tick the acting worker writes its heartbeat
(``Pworker:heartbeat``, expiring after :data:`HEARTBEAT_TTL_S`); ``cliffwatch status``
says ``NOT TICKING`` when it is gone, and a follower logs a warning (it takes over
through the leader lease on its own). With a :class:`~.selfmetrics.WorkerMetrics`
(``monitor``) every tick is also recorded as Prometheus series.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from types import FrameType

import numpy as np

from ..errors import CliffwatchError, ConfigError, RulesError
from ..metrics.store import Store
from ..rules.config import Rule, RuleSet, load_rules
from ..rules.detector import HISTORY_S, LEND_S, WARMUP_MINUTES, Detector, Transition
from . import snapshots
from .alert import BLIND_METRIC, Alert, no_data_incident
from .alertmanager import ALERTMANAGER, WEBHOOK, AlertmanagerNotifier, WebhookNotifier, hold_for
from .blind import BlindWatch
from .incidents import Incidents, Route, pagerduty_service_notifier, slack_channel_notifier
from .leader import Leader, LostLeadership
from .notifiers import Notifier, PagerDutyNotifier, SlackNotifier
from .quiet import QuietHold
from .selfmetrics import WorkerMetrics
from .shards import LostShard, ShardMap
from .silences import Silences

log = logging.getLogger("cliffwatch.worker")

WATERMARK_S = 1.2  # a second is judged once every app flushed it, or this long after it
TICK_PHASE_S = 0.1  # ticks run this long after each second boundary, after the flushes
HOST_SPREAD_S = 0.5
"""Sharded workers on one host spread their ticks over this much of each second, by rank
among them: all at once, they would only wait for each other's cores (and Redis)."""
EMITTER_LIVE_S = 5.0  # an app process that flushed this recently is waited for
SNAPSHOT_EVERY_S = 300
SHARDED_SNAPSHOT_EVERY_S = 60
"""With shard leases (every ``run()``), snapshots are saved every minute: a dead worker's
metrics are taken over from at most a minute back. A worker within that much of the clock
saves them every that many seconds of data; one catching up, at most that often by the
clock (not at every whole minute it replays)."""
SNAPSHOT_SPREAD_S = 30.0
"""The background thread spreads writing a minute's snapshots (compressing ~25 KB per
metric) over this long, so that several workers on one machine do not all compress at
once at the minute and slow each other's ticks; one waited for goes at full speed."""
LOST_GRACE_S = 60.0
"""A sharded worker that loses a shard's lease (Redis restarted, or was out of reach)
keeps learning, without deciding for, its metrics this long: taking the shard back, it
carries on instead of learning them again."""
RESCAN_EVERY_S = 60  # how often glob rules are matched against new metric names
FULL_RESCAN_EVERY = 10
"""Apps only ever add metric names, so a background rescan first counts them and reads
them only if the count changed, or on every FULL_RESCAN_EVERY-th rescan (names removed
by hand as others were added)."""
STATUS_EVERY_S = 5
STATUS_SPREAD_FROM = 5_000
STATUS_SPREAD_S = 8
"""From STATUS_SPREAD_FROM metrics on, each tick writes every STATUS_SPREAD_S-th status
in turn (each metric's every 8 s), not all of them every STATUS_EVERY_S: at 25,000
metrics the statuses were the costliest part of a tick after the reads and the math.
``cliffwatch status`` shows a status older than
:data:`~cliffwatch.alerting.status.NO_DATA_AFTER_S` (12 s) as "no data", and a takeover
learns how far a shard was judged from the shard's own record, not from statuses."""
CATCH_UP_MAX_S = 2 * 3600  # after a long outage of the worker, replay at most this much
HEARTBEAT_TTL_S = 10.0
"""The heartbeat key expires this long after the last tick: then nobody is ticking."""
SLOW_TICK_S = 1.0  # a tick longer than this logs where its time went


def build_notifiers(rules: RuleSet) -> dict[str, Notifier]:
    """The notifiers a rules file asks for (secrets already resolved from the
    environment): ``slack`` and ``pagerduty`` for the defaults, ``slack:<channel>`` for
    each channel a rule names (with a bot token) and ``pagerduty:<service>`` for each
    ``[pagerduty.services]`` service with a routing key. Raises :class:`ConfigError`
    for unusable settings."""
    out: dict[str, Notifier] = {}
    slack = rules.slack
    if slack is not None and slack.token and slack.channel:
        out["slack"] = SlackNotifier(
            token=slack.token, channel=slack.channel, base_url=slack.base_url
        )
    elif slack is not None and slack.webhook_url:
        out["slack"] = SlackNotifier(webhook_url=slack.webhook_url)
    if slack is not None and slack.token:
        for channel in dict.fromkeys(r.slack_channel for r in rules.rules if r.slack_channel):
            out[slack_channel_notifier(channel)] = SlackNotifier(
                token=slack.token, channel=channel, base_url=slack.base_url
            )
    pd = rules.pagerduty
    if pd is not None and pd.routing_key:
        out["pagerduty"] = PagerDutyNotifier(
            routing_key=pd.routing_key, url=pd.url, source=pd.source
        )
    url = pd.url if pd is not None else ""
    for service in pd.services.values() if pd is not None else ():
        if service.routing_key:
            out[pagerduty_service_notifier(service.name)] = PagerDutyNotifier(
                routing_key=service.routing_key, url=url, source=service.source
            )
    if rules.alertmanager is not None:
        # Re-sent by the reminders; endsAt covers two reminder intervals.
        out[ALERTMANAGER] = AlertmanagerNotifier(
            url=rules.alertmanager.url,
            labels=rules.alertmanager.labels,
            hold_s=hold_for(rules.reminder_s),
        )
    if rules.webhook is not None:
        out[WEBHOOK] = WebhookNotifier(url=rules.webhook.url, labels=rules.webhook.labels)
    return out


class Worker:
    """Judges the metrics a rule set names, against one store.

    :param store: the Redis the apps flush to.
    :param rules: which metrics, and how each alerts.
    :param notifiers: ``{"slack": ..., "pagerduty": ...}``; default: built from ``rules``.
    :param clock: epoch seconds (tests and the demo pass their own).
    :param on_alert: called with every alert as it is decided.
    :param leader: the election this worker takes part in; ``None``: it acts alone (and
        :meth:`run` makes one).
    :param monitor: where to record the worker's own health (ticks, lag, alerts,
        deliveries, leadership); ``None``: nowhere.
    :param shards: the shard leases this worker takes part in; it then judges only the
        metrics of the shards it holds. ``None``: it judges every metric (and :meth:`run`
        makes one: a lone worker holds every shard).
    """

    def __init__(
        self,
        store: Store,
        rules: RuleSet,
        *,
        notifiers: dict[str, Notifier] | None = None,
        clock: Callable[[], float] = time.time,
        watermark: float = WATERMARK_S,
        warmup_minutes: int = WARMUP_MINUTES,
        on_alert: Callable[[Alert], None] | None = None,
        leader: Leader | None = None,
        monitor: WorkerMetrics | None = None,
        shards: ShardMap | None = None,
    ) -> None:
        if watermark < 0 or not math.isfinite(watermark):
            raise ConfigError(f"watermark must be a number of seconds >= 0, not {watermark!r}")
        self.store = store
        self.rules = rules
        self.clock = clock
        self.watermark = watermark
        self.warmup_minutes = warmup_minutes
        self.incidents = Incidents(
            store,
            Route(
                build_notifiers(rules) if notifiers is None else notifiers,
                rules=lambda: self.rules,
            ),
            on_alert=on_alert,
            clock=clock,
            silences=Silences(store, clock=clock),
            fence=leader,
        )
        self.incidents.recent = self.minute_rates
        self.quiet = QuietHold(store, self.incidents.outbox, rules.quiet_hours, clock=clock)
        self.leader = leader
        self.shards: ShardMap | None = None
        self._all: list[str] = []  # every metric the rules name (sharded: some judged here)
        self._all_version = 0
        self._lost_since: dict[int, float] = {}  # shards whose lease lapsed -> when noticed
        self._shards_seen: tuple[frozenset[tuple[int, int]], int] | None = None
        self._gain_pending = False  # metrics of held shards not taken on yet
        if shards is not None:
            self._use_shards(shards)
        self.monitor = monitor
        if monitor is not None:
            self.incidents.outbox.on_delivery = monitor.delivery
        self._leader_silent = False  # a follower has noticed the leader's heartbeat is gone
        self._acting = False  # leads, and has taken over the open incidents
        self.metrics: list[str] = []
        self.rule_of: list[Rule] = []
        self.detector = Detector(0, warmup_minutes=warmup_minutes)
        self.blind = BlindWatch(store, self.incidents)
        self._reload = threading.Event()  # set by SIGHUP: read the rules file again
        self._stop = threading.Event()
        self._signals = 0
        self._last_rescan = -math.inf
        self._last_snapshot = -math.inf  # by the clock
        self._snapshot_at = -math.inf  # the epoch second the last snapshot is valid at
        self._last_status = -math.inf
        self._status_turn = 0  # which part of a large share's statuses is written next
        # In the live loop (run), the minute's snapshots are compressed and written by
        # one background thread, so a whole-minute tick is not held up by them.
        self._saver: ThreadPoolExecutor | None = None
        self._saving: Future[None] | None = None
        self._saving_at = 0  # the second the snapshots being written are valid at
        self._hurry = threading.Event()  # set: write them without pause
        # ... and the snapshots of shards just taken are read by another, as soon as the
        # lease thread takes them, for the tick that takes their metrics on (it also
        # reads and matches the metric names for the rescans)
        self._prefetcher: ThreadPoolExecutor | None = None
        self._scanning: Future[list[str] | None] | None = None  # a rescan in the background
        self._known: tuple[int, int] | None = None  # names read last, rescans since
        self._prefetching: list[Future[dict[str, snapshots.Snapshot | None]]] = []
        self._prefetch_lock = threading.Lock()
        self._ticks = 0
        self._last_gain: tuple[int, float] | None = None
        self._phases: dict[str, float] = {}  # seconds per phase of the last _gain
        self._tick_phases: dict[str, float] = {}  # and of the last tick
        self._loaded: dict[str, snapshots.Snapshot | None] = {}  # read by a refused _gain
        self._recent_ticks: deque[tuple[int, float]] = deque(maxlen=8)

    def _use_shards(self, shards: ShardMap) -> None:
        self.shards = shards
        self.incidents.judge = shards
        self.incidents.leader_only.add(BLIND_METRIC)

    @property
    def _deciding(self) -> bool:
        """Whether this worker decides for the metrics it judges: always when sharded
        (each decision is fenced by the metric's shard), else while it leads."""
        return self._acting if self.shards is None else True

    # -- lifecycle ----------------------------------------------------------------

    def start(self, now: float | None = None) -> None:
        """Connect, pick the metrics, restore what they learnt and catch up. Raises
        :class:`~cliffwatch.errors.StoreError` if Redis cannot be reached."""
        now = self.clock() if now is None else now
        self.store.ping()
        self._acting = False
        self._rescan(now, force=True)
        self._follow_leader()

    def tick(self, now: float | None = None) -> list[Alert]:
        """Judge every second closed since the last tick; return the alerts decided.

        Then the acting worker writes its heartbeat, and a follower checks the leader's.
        Raises :class:`~cliffwatch.errors.StoreError` if Redis fails."""
        now = self.clock() if now is None else now
        started = time.perf_counter()
        alerts = self._tick(now)
        took = time.perf_counter() - started
        if took > SLOW_TICK_S:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in self._tick_phases.items() if v >= 0.01)
            log.info("slow tick: %.2f s (%s s)", took, parts)
        if self.shards is not None:
            self._ticks += 1
            self._recent_ticks.append((self._ticks, round(took, 4)))
            nxt = self.detector.next_second
            self.shards.info = {
                "metrics": len(self._judged_rows()),
                "leader": self._acting,
                "ticks": list(self._recent_ticks),  # [tick number, seconds] of the last few
                "judged_to": nxt,  # the first second not judged yet
                "gained": self._last_gain,  # [metrics, seconds] of the last shards taken on
            }
        if self._acting:
            self.store.beat(now, int(HEARTBEAT_TTL_S * 1000))
        else:
            self._check_heartbeat(now)
        if self.monitor is not None:
            nxt = self.detector.next_second
            lag = None if nxt is None else max(0.0, now - nxt)
            self.monitor.ticked(
                time.perf_counter() - started, lag, len(self.metrics), self._acting, alerts
            )
        return alerts

    def _check_heartbeat(self, now: float) -> None:
        """As a follower, log once when the leader's heartbeat is gone (and once when it
        is back); taking over is the leader lease's business."""
        try:
            alive, last = self.store.heartbeat()
        except CliffwatchError:
            return
        if alive is not None:
            if self._leader_silent:
                log.warning("the leader worker's heartbeat is back")
            self._leader_silent = False
            return
        if not self._leader_silent:
            since = "never" if last is None else f"last tick {now - last:.0f} s ago"
            log.warning("no heartbeat from a leader worker (%s): nobody is ticking", since)
            self._leader_silent = True

    def _tick(self, now: float) -> list[Alert]:
        self._tick_phases = {}
        phase = functools.partial(self._phase, into=self._tick_phases)
        end = self._closed_end(now)  # seconds before this are judged
        alerts: list[Alert] = []
        if self._reload.is_set():
            self._reload.clear()
            self.reload_rules(now)
        if self._scanning is not None and self._scanning.done():
            with phase("rescan"):
                self._rescanned(now)
        if now - self._last_rescan >= RESCAN_EVERY_S:
            with phase("rescan"):
                self._rescan(now)
        self._follow_leader()
        if self._acting:
            self.quiet.flush(now)  # the quiet-hours digest, once the window is over
        with phase("shards"):
            self._follow_shards(end)
        nxt = self.detector.next_second
        if nxt is None or not self.metrics:
            return alerts
        if self.shards is not None and nxt % 60 == 0 and self._snapshot_due(now, nxt):
            # the tick after a whole minute's: that one closed the minute
            with phase("snapshot"):
                self.save_snapshots(nxt)
        start = max(nxt, end - CATCH_UP_MAX_S)
        if self.shards is not None:  # stop at each whole minute, to hand over and snapshot
            end = min(end, start - start % 60 + 60)
        if end > start:
            with phase("read"):
                counts = self.store.read_counts(self.metrics, start, end)
            if self._saving is not None and end - self._saving_at > LEND_S:
                with phase("snapshot"):  # the copy must be done before it is overwritten
                    self._saved()
            with phase("judge"):
                alerts += self._apply(self.detector.update(counts, start))
        if end % 60 == 0:
            with phase("hand-over"):
                self._hand_over(end)
        with phase("incidents"):
            self._remind(end)
            self.incidents.retry_pending(self.metrics)
        if self._deciding:  # a follower decides nothing
            with phase("no-data"):
                alerts += self._check_blind(now, end)
        if self.shards is None and end % 60 == 0 and self._snapshot_due(now, end):
            with phase("snapshot"):
                self.save_snapshots(end)
        if self._deciding:
            with phase("status"):
                self._write_statuses(now, end)
                self._write_judged_to()
        return alerts

    def _snapshot_due(self, now: float, at: int) -> bool:
        """Whether to save snapshots valid at ``at``, a whole minute: a period of data
        after the last ones when ``at`` is within a period of the clock, else (catching
        up) a period of the clock after them."""
        every = SNAPSHOT_EVERY_S if self.shards is None else SHARDED_SNAPSHOT_EVERY_S
        if not self._deciding:
            return False
        if now - at < every:
            return at - self._snapshot_at >= every
        return now - self._last_snapshot >= every - 1

    def _write_statuses(self, now: float, end: int) -> None:
        """Every STATUS_EVERY_S: write every judged metric's status; from
        STATUS_SPREAD_FROM metrics on, a tick writes every STATUS_SPREAD_S-th of them
        in turn instead, so no tick carries them all."""
        rows = self._judged_rows()
        if len(rows) >= STATUS_SPREAD_FROM:
            self._status_turn = (self._status_turn + 1) % STATUS_SPREAD_S
            self.write_status(end, rows[self._status_turn :: STATUS_SPREAD_S])
        elif now - self._last_status >= STATUS_EVERY_S:
            self.write_status(end, rows)
            self._last_status = now

    def _write_judged_to(self) -> None:
        """Record, for the shards whose metrics this worker judges, the second it has
        judged them up to, so a worker taking them over after a crash only feeds the
        seconds before it (statuses say the same, but are written a part per tick)."""
        nxt = self.detector.next_second
        if self.shards is None or nxt is None or self._gain_pending:
            return
        held = [n for n in self.shards.held() if n not in self._lost_since]
        self.store.set_judged_to(held, nxt)

    def _closed_end(self, now: float) -> int:
        """The first second not to judge yet: every earlier one has been flushed by each
        app process that is reporting (they record the second they flushed up to), or
        has been closed for ``watermark`` seconds, whichever comes first."""
        patient = int(math.floor(now - self.watermark))
        try:
            emitters = self.store.emitters()
        except CliffwatchError:
            return patient
        live = [last for last in emitters.values() if last >= now - EMITTER_LIVE_S]
        if not live:
            return patient
        return max(patient, min(int(math.floor(now)), min(live)))

    def run(self) -> None:
        """Tick once a second until :meth:`stop` (or SIGTERM/SIGINT: the first finishes
        the tick and stops, a second exits at once)."""
        self._install_signals()
        if self.leader is None:
            self.leader = Leader(self.store)
            self.incidents.fence = self.leader
        if self.shards is None:
            self._use_shards(ShardMap(self.store))
        assert self.shards is not None
        self.shards.start()
        self.leader.start()
        self.start()
        self.incidents.outbox.start()
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="cliffwatch-snapshots")
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="cliffwatch-prefetch")
        self.shards.on_taken = self._prefetch
        log.info("watching %d metrics", len(self.metrics))
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except CliffwatchError as exc:  # Redis away: say so, try again next tick
                    log.error("tick failed: %s", exc)
                    if self.monitor is not None:
                        self.monitor.tick_errors.inc()
                now = self.clock()
                self._stop.wait(1.0 - now % 1.0 + self._tick_phase())  # after the flushes
        finally:
            self.close()

    def _tick_phase(self) -> float:
        """How long after each second boundary this worker ticks: :data:`TICK_PHASE_S`,
        plus, with other workers on this host, its rank among them in
        :data:`HOST_SPREAD_S`."""
        if self.shards is None:
            return TICK_PHASE_S
        token = self.shards.token
        host = token.rsplit(":", 2)[0]
        mates = sorted(m for m in self.shards.members if m.rsplit(":", 2)[0] == host)
        if len(mates) < 2 or token not in mates:
            return TICK_PHASE_S
        return TICK_PHASE_S + HOST_SPREAD_S * mates.index(token) / len(mates)

    def request_reload(self) -> None:
        """Ask the next tick to read the rules file again (what SIGHUP does)."""
        self._reload.set()

    def reload_rules(self, now: float | None = None) -> bool:
        """Read the rules file again and watch what it names from now on; True if it did.

        A file that fails to load changes nothing: the old rules stay in force, one line
        on the log says why, and False is returned. Metrics kept keep what they learnt
        and their open incidents. Where alerts go (``[slack]``, ``[pagerduty]``) is
        read at start only: a change there is logged and takes effect on restart.
        Raises :class:`~cliffwatch.errors.StoreError` if Redis fails while the metrics
        are picked again: the old rules are then kept and the reload is tried again on
        the next tick.
        """
        now = self.clock() if now is None else now
        path = self.rules.path
        if path is None:
            log.error("rules reload: these rules did not come from a file; keeping them")
            return False
        try:
            rules = load_rules(path)
        except RulesError as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("rules reload failed, keeping the old rules: %s", line)
            return False
        old_rules = self.rules
        self.rules = rules
        try:
            self._rescan(now, force=True)
        except CliffwatchError:
            self.rules = old_rules
            self._reload.set()
            raise
        for warning in rules.warnings:
            log.warning("%s", warning)
        if _where_alerts_go(rules) != _where_alerts_go(old_rules):
            log.warning(
                "rules reload: [slack], [pagerduty], [quiet_hours] and the rules' own "
                "channels and services take effect on restart"
            )
        log.info("rules reloaded from %s: %d rules", path, len(rules.rules))
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to stop after the current tick."""
        self._stop.set()

    def close(self) -> None:
        """Save what the metrics learnt (when at a whole minute) and disconnect."""
        try:
            nxt = self.detector.next_second
            if nxt is not None and nxt % 60 == 0 and self.metrics and self._deciding:
                self.save_snapshots(nxt)
        except CliffwatchError as exc:
            log.error("could not save snapshots: %s", exc)
        self._saved()
        if self._saver is not None:
            self._saver.shutdown()
            self._saver = None
        if self._prefetcher is not None:
            self._prefetcher.shutdown(cancel_futures=True)
            self._prefetcher = None
        self.incidents.outbox.stop()
        if self.leader is not None:
            self.leader.stop()
        if self.shards is not None:
            self.shards.stop()
        self._acting = False

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                raise SystemExit(128 + signum)
            log.info("stopping after this tick (signal %d again to exit now)", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reload())

    # -- metrics ------------------------------------------------------------------

    def _rescan(self, now: float, force: bool = False) -> None:
        """Match the rules against the known metric names; start watching new ones. In
        the live loop the names are read and matched by a background thread, and a later
        tick takes the result (:meth:`_rescanned`): with many metrics that is a large
        read."""
        self._last_rescan = now
        if force or self._prefetcher is None:
            self._scanning = None  # one in the background may have matched older rules
            self._matched(self._scan(), now, force)
        elif self._scanning is None:
            self._scanning = self._prefetcher.submit(self._scan_if_new)

    def _scan(self) -> list[str]:
        """The metrics the rules name or match among the known names."""
        if not any(r.is_glob for r in self.rules.rules):
            self._known = None
            return self.rules.metrics([])
        known = self.store.metric_names()
        self._known = (len(known), 0)
        return self.rules.metrics(known)

    def _scan_if_new(self) -> list[str] | None:
        """:meth:`_scan`, or ``None`` (nothing new) if there are as many known names as
        at the last read, unless that was :data:`FULL_RESCAN_EVERY` rescans ago."""
        last = self._known
        if (
            last is not None
            and last[1] < FULL_RESCAN_EVERY - 1
            and self.store.count_metric_names() == last[0]
        ):
            self._known = (last[0], last[1] + 1)
            return None
        return self._scan()

    def _rescanned(self, now: float) -> None:
        """Take on the result of the background rescan (a failed read is logged; the
        next rescan tries again)."""
        scanning, self._scanning = self._scanning, None
        assert scanning is not None
        try:
            names = scanning.result()
        except CliffwatchError as exc:
            log.error("could not read the metric names: %s", exc)
            return
        if names is not None:
            self._matched(names, now)

    def _matched(self, names: list[str], now: float, force: bool = False) -> None:
        """The rules now match ``names``: note them, and (unsharded) watch them."""
        if names != self._all:
            self._all = names
            self._all_version += 1
        if self.shards is not None:
            if not force:
                return  # new names are taken on by _follow_shards, like gained shards
            held = self.shards.held()
            names = [m for m in names if self.shards.shard_of(m) in held]
        if not force and names == self.metrics:
            return
        self._watch(names, int(math.floor(now - self.watermark)))

    def _watch(self, names: Sequence[str], end: int) -> None:
        """Build a detector for ``names``: keep what running metrics learnt, restore
        snapshots of new ones, and refill their history up to second ``end``."""
        names = list(names)
        if not names:  # nothing to judge (yet): e.g. every shard is held elsewhere
            self.metrics, self.rule_of = [], []
            self.detector = Detector(0, warmup_minutes=self.warmup_minutes)
            log.info("watching no metrics")
            self._say_share()
            return
        old = {m: i for i, m in enumerate(self.metrics)}
        # everything starts at a whole minute, HISTORY_S before the snapshot or now
        new = [m for m in names if m not in old]
        snaps = dict(zip(new, snapshots.load(self.store, new), strict=True))
        at = [s.at for s in snaps.values() if s is not None]
        base = self.detector.next_second if old and self.detector.next_second else None
        if base is None:
            base = max(at) if at else end - end % 60
        # snapshots saved at another minute are taken on afterwards, group by group
        later = [m for m, s in snaps.items() if s is not None and s.at != base]
        if later:
            skip = set(later)
            names = [m for m in names if m not in skip]
            if not names:
                self._watch([], end)
                self._gain(later, end)
                return
        rules = [self.rules.match(m) for m in names]
        det = Detector(
            len(names),
            [r.threshold if r else -3.0 for r in rules],
            [r.min_rate if r else 0.0 for r in rules],
            self.warmup_minutes,
        )
        kept = [(i, old[m]) for i, m in enumerate(names) if m in old]
        if kept:
            det.unpack([i for i, _ in kept], self.detector.pack([j for _, j in kept]))
        back = [(i, snaps[m]) for i, m in enumerate(names) if m not in old]
        back = [(i, s) for i, s in back if s is not None and s.at == base]
        snapshots.restore(det, [i for i, _ in back], [s for _, s in back if s is not None])
        restored = bool(kept or back)
        self._restore_incidents(det, self.store.get_states(names))
        acting = self._deciding
        if restored:
            hist_start = base - HISTORY_S
            recent = [(i, s.recent) for i, s in back if s is not None and s.recent is not None]
            if kept:
                rows = [i for i, _ in kept]
                recent += zip(rows, self.detector.recent_counts([j for _, j in kept]), strict=True)
            self._prime(det, names, hist_start, base, recent)
        else:  # nothing learnt yet: learn from the history Redis still has
            replay = min(self.store.retention_s - 120, CATCH_UP_MAX_S)
            hist_start = base - max(replay, HISTORY_S)
            det.update(self.store.read_counts(names, hist_start, base), hist_start)
        # Catch up to ``end`` here, not in tick(), and only then compare with the open
        # incidents: judged as of ``base`` (the snapshot, or the last whole minute), an
        # incident that opened since would be resolved, and then paged again.
        catch_up = max(base, end - CATCH_UP_MAX_S)
        if end > catch_up:
            det.update(self.store.read_counts(names, catch_up, end), catch_up)
        if acting:
            self._reconcile(det, names, max(base, end))
        self.metrics, self.rule_of, self.detector = names, [r for r in rules if r], det
        log.info("watching %s", ", ".join(names) if len(names) < 20 else f"{len(names)} metrics")
        self._say_share()
        if later:
            self._gain(later, end)

    # -- shards -------------------------------------------------------------------

    def _say_share(self) -> None:
        if self.shards is not None:
            log.info(
                "judging %d of %d metrics (%d of %d shards)",
                len(self.metrics),
                len(self._all),
                len(self.shards.held()),
                self.shards.shards,
            )

    def _follow_shards(self, end: int) -> None:
        """Stop judging the metrics of shards no longer held (their leases lapsed), and
        take on those of shards gained (and new metrics of held shards)."""
        if self.shards is None:
            return
        leaving = self.shards.leaving()
        if leaving:  # a shard with none of this worker's metrics is handed over at once
            empty = leaving - {self.shards.shard_of(m) for m in self.metrics}
            if empty:
                self.shards.release(sorted(empty))
        held = self.shards.held()
        seen = (frozenset(held.items()), self._all_version)
        if seen == self._shards_seen and not self._lost_since:
            return  # nothing changed since the last tick
        shard_of, now = self.shards.shard_of, time.monotonic()
        for n in {shard_of(m) for m in self.metrics} - set(held):
            if n not in self._lost_since:
                log.warning("shard %d's lease lapsed: learning, not deciding, for its metrics", n)
            self._lost_since.setdefault(n, now)
        back = {n for n in self._lost_since if n in held}
        expired = {n for n, t in self._lost_since.items() if now - t >= LOST_GRACE_S}
        for n in back | expired:
            del self._lost_since[n]
        if expired:
            keep = [i for i, m in enumerate(self.metrics) if shard_of(m) not in expired]
            log.warning(
                "no longer judging %d metrics: their shards' leases lapsed %d s ago",
                len(self.metrics) - len(keep),
                LOST_GRACE_S,
            )
            self._keep(keep)
            self._say_share()
        if back:  # taken back: compare with what may have been decided meanwhile
            rows = [i for i, m in enumerate(self.metrics) if shard_of(m) in back]
            try:
                self._reconcile(self.detector.take(rows), [self.metrics[i] for i in rows], end)
            except LostShard as exc:
                log.warning("%s", exc)
        have = set(self.metrics)
        new = [m for m in self._all if m not in have and self.shards.shard_of(m) in held]
        self._gain_pending = bool(new) and not self._gain(new, end)
        if not self._gain_pending:
            self._shards_seen = seen

    def _keep(self, rows: Sequence[int]) -> None:
        """Judge only the metrics at ``rows`` from now on (in place: the order changes)."""
        self._saved()  # snapshots still being copied out read the rows that move
        order = self.detector.keep(rows)
        self.metrics = [self.metrics[i] for i in order]
        self.rule_of = [self.rule_of[i] for i in order]

    def _gain(self, names: list[str], end: int) -> bool:
        """Start judging ``names`` (metrics of shards just taken): restore their
        snapshots, refill their history and catch up to the second the running detector
        is at, compare them with their open incidents, and join them to the running
        detector (which keeps what it holds). Snapshots saved at different minutes are
        taken on group by group. False if one is newer than the running detector: then
        it is tried again on the next tick."""
        began = time.perf_counter()
        at = self.detector.next_second
        if at is None or not self.metrics:
            self._watch([*self.metrics, *names], end)
            return True
        self._phases = {}
        with self._phase("load"):  # what was read ahead, or by a try refused below
            known = self._prefetched() | self._loaded
            missing = [m for m in names if m not in known]
            known.update(zip(missing, snapshots.load(self.store, missing), strict=True))
        self._loaded = {m: known[m] for m in names}  # kept while refused
        snaps = [known[m] for m in names]
        if any(s is not None and s.at > at for s in snaps):
            return False  # saved after the second this worker is at: on the next tick
        self._loaded = {}
        with self._phase("restore"):
            states = self.store.get_states(names)
            judged = [_status_at(st) for st in states]  # judged up to, by their statuses...
            if self.shards is not None:  # ... or by what their shards' last holder recorded
                shard = [self.shards.shard_of(m) for m in names]
                recorded = self.store.judged_to(sorted(set(shard)))
                judged = [max(j, recorded.get(n, 0)) for j, n in zip(judged, shard, strict=True)]
        # by the minute the snapshot was saved at, and whether a metric's incident opened
        # or closed in the seconds its windows will reach over (those are judged again
        # from the snapshot on, so their windows leave the incident out as before)
        groups: dict[tuple[int | None, bool], list[int]] = {}
        for i, snap in enumerate(snaps):
            base = None if snap is None else snap.at
            quiet = base is not None and _quiet_since(states[i], base - HISTORY_S)
            groups.setdefault((base, quiet), []).append(i)
        for base, quiet in sorted(groups, key=lambda g: (g[0] is None, g[0] or 0, g[1])):
            rows = groups[base, quiet]
            self._gain_group(
                [names[i] for i in rows],
                [snaps[i] for i in rows],
                [states[i] for i in rows],
                base,
                min(judged[i] for i in rows) if quiet else None,
            )
        self._last_gain = (len(names), round(time.perf_counter() - began, 3))
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self._phases.items())
        log.info("took on %d metrics in %.2f s (%s s)", *self._last_gain, parts)
        self._say_share()
        return True

    def _prefetch(self, shards: list[int]) -> None:
        """(The lease thread.) Start reading the snapshots of the metrics of ``shards``,
        just taken, in the background."""
        prefetcher, judge = self._prefetcher, self.shards
        if prefetcher is None or judge is None:
            return
        taken, judged = set(shards), set(self.metrics)
        names = [m for m in self._all if judge.shard_of(m) in taken and m not in judged]
        if not names:
            return

        def load() -> dict[str, snapshots.Snapshot | None]:
            return dict(zip(names, snapshots.load(self.store, names), strict=True))

        try:
            future = prefetcher.submit(load)
        except RuntimeError:  # shut down meanwhile
            return
        with self._prefetch_lock:
            self._prefetching.append(future)

    def _prefetched(self) -> dict[str, snapshots.Snapshot | None]:
        """The snapshots read by :meth:`_prefetch` since the last call (waiting for
        reads still running); a read that failed is logged and left out."""
        with self._prefetch_lock:
            futures, self._prefetching = self._prefetching, []
        out: dict[str, snapshots.Snapshot | None] = {}
        for future in futures:
            try:
                out.update(future.result())
            except CliffwatchError as exc:
                log.warning("could not read snapshots ahead: %s", exc)
        return out

    def _gain_group(
        self,
        names: list[str],
        snaps: Sequence[snapshots.Snapshot | None],
        states: Sequence[dict[str, str]],
        base: int | None,
        judged_to: int | None,
    ) -> None:
        """:meth:`_gain` for metrics whose snapshots were all saved at second ``base``
        (``None``: metrics without one, which learn from the history Redis has), with
        their alert ``states``. ``judged_to``: their last judge judged every second
        before it, and no incident of theirs opened or closed lately, so the seconds
        from ``base`` to it are only fed (``None``: all are judged again)."""
        main, at = self.detector, self.detector.next_second
        assert at is not None
        with self._phase("build"):
            rules = [self.rules.match(m) for m in names]
            sub = Detector(  # in the running detector's spare rows
                len(names),
                [r.threshold if r else -3.0 for r in rules],
                [r.min_rate if r else 0.0 for r in rules],
                self.warmup_minutes,
                host=main,
            )
        if base is not None:
            hist_start = base - HISTORY_S
        else:
            base = at - at % 60
            hist_start = base - max(min(self.store.retention_s - 120, CATCH_UP_MAX_S), HISTORY_S)
        pos = main.position - (at - hist_start)
        if pos < 0:  # the running detector's history is shorter: count its positions up
            main.renumber(-(pos // HISTORY_S))
            pos = main.position - (at - hist_start)
        sub.align(pos)
        kept = [s for s in snaps if s is not None]
        with self._phase("restore"):
            if kept:
                snapshots.restore(sub, range(len(names)), kept)
            self._restore_incidents(sub, states)
        with self._phase("history"):
            if kept:
                recent = [(i, s.recent) for i, s in enumerate(kept) if s.recent is not None]
                self._prime(sub, names, hist_start, base, recent)
            else:
                sub.update(self.store.read_counts(names, hist_start, base), hist_start)
        with self._phase("catch-up"):
            # the seconds the last holder judged (by its statuses or its shards' record)
            # are only fed; the rest are judged
            judged_to = base if judged_to is None else min(at, max(base, judged_to))
            if judged_to > base:
                sub.update(self.store.read_counts(names, base, judged_to), base, judge=False)
            if at > judged_to:
                sub.update(self.store.read_counts(names, judged_to, at), judged_to)
        with self._phase("reconcile"):
            try:
                self._reconcile(sub, names, at)
            except LostShard as exc:
                log.warning("%s", exc)  # dropped on the next tick
        with self._phase("extend"):
            main.extend(sub)
        self.metrics = [*self.metrics, *names]
        self.rule_of = [*self.rule_of, *(r for r in rules if r)]

    @contextmanager
    def _phase(self, name: str, into: dict[str, float] | None = None) -> Iterator[None]:
        """Add the time spent inside to phase ``name`` in ``into`` (default: of the
        metrics being taken on)."""
        into = self._phases if into is None else into
        began = time.perf_counter()
        try:
            yield
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - began

    def _hand_over(self, at: int) -> None:
        """At a whole minute: save the snapshots of the metrics of held shards now
        assigned to another worker, stop judging them, and release those shards."""
        if self.shards is None or self.detector.next_second != at:
            return
        leaving = self.shards.leaving()
        if not leaving:
            return
        going = [i for i, m in enumerate(self.metrics) if self.shards.shard_of(m) in leaving]
        self._save_snapshots([self.metrics[i] for i in going], going, at)
        gone = set(going)
        self._keep([i for i in range(len(self.metrics)) if i not in gone])
        self.shards.release(sorted(leaving))
        self._say_share()

    def _prime(
        self,
        det: Detector,
        names: Sequence[str],
        start: int,
        end: int,
        recent: Sequence[tuple[int, np.ndarray]],
    ) -> None:
        """Refill ``det``'s per-second history from ``start`` to ``end``: the last seconds
        of the rows in ``recent`` (row, counts just before ``end``) as given, the rest
        from Redis."""
        counts = np.full((len(names), end - start), np.nan, np.float32)  # as snapshots keep them
        given = {i for i, _ in recent}
        missing = [i for i in range(len(names)) if i not in given]
        if missing:
            counts[missing] = self.store.read_counts([names[i] for i in missing], start, end)
        if recent:
            seconds = np.stack([r for _, r in recent])
            width = min(seconds.shape[1], end - start)
            counts[[i for i, _ in recent], end - start - width :] = seconds[:, -width:]
        det.prime(counts, start)

    def _reconcile(self, det: Detector, names: Sequence[str], at: int) -> None:
        """After learning from history: open an incident for a metric that is down now,
        close one that recovered while nobody watched (the states read in one round
        trip; only a metric that changed is written)."""
        for i, (m, st) in enumerate(zip(names, self.store.get_states(names), strict=True)):
            if bool(det.firing[i]) == (st.get("state") == "firing"):
                continue
            rule = self.rules.match(m)
            if rule is None:
                continue
            if det.firing[i] and st.get("state") != "firing":
                self.incidents.fire(
                    m,
                    at,
                    rule.severity,
                    rule.threshold,
                    float(det.score[i]),
                    float(det.rate[i]),
                    float(det.frozen[i]),
                )
            elif not det.firing[i] and st.get("state") == "firing":
                self.incidents.resolve(m, at, float(det.score[i]), float(det.rate[i]))

    def _follow_leader(self) -> None:
        """Start acting when this worker has just become the leader (compare what the
        detector says with the open incidents, and queue again what was decided but
        perhaps never reached the outbox); stop when it no longer leads."""
        leads = self.leader is None or self.leader.holds()
        if leads == self._acting:
            return
        if not leads:
            self._acting = False
            log.warning(
                "following: delivering nothing"
                if self.shards
                else "following: deciding and delivering nothing"
            )
            return
        self._acting = True
        self.blind.reset()  # another worker may have opened or resolved no-data incidents
        try:
            nxt = self.detector.next_second
            if nxt is not None and self.metrics and self.shards is None:
                self._reconcile(self.detector, self.metrics, nxt)
            # sharded: the metrics' owners reconcile; the leader delivers for them all
            everything = self._all if self.shards is not None else self.metrics
            watched = [*everything, BLIND_METRIC, *map(no_data_incident, everything)]
            self.incidents.outbox.requeue(self.incidents.undelivered(watched))
        except LostLeadership:
            self._acting = False
        except CliffwatchError:
            self._acting = False  # Redis away: take over on a later tick
            raise

    def _restore_incidents(self, det: Detector, states: Sequence[dict[str, str]]) -> None:
        """Mark the metrics whose alert state (``states``, in row order) has an open
        incident as firing."""
        for i, st in enumerate(states):
            if st.get("state") == "firing":
                det.firing[i] = True
                det.frozen[i] = float(st.get("baseline", "nan"))

    def save_snapshots(self, at: int) -> None:
        """Store what every metric has learnt, as of epoch second ``at`` (sharded: those
        of the shards it holds). In the live loop the tick copies out only what the
        next seconds would overwrite (~4 KB per metric, see
        :meth:`Detector.pack_later`) and a background thread copies the rest (~35 KB),
        compresses and writes it. The tick that would feed the detector past
        :data:`LEND_S` seconds, a hand-over, the next save and shutdown wait for it
        first, so the copy is of the minute and snapshots are written in order."""
        rows = self._judged_rows()
        names = [self.metrics[i] for i in rows]
        if self._saver is None:
            self._save_snapshots(names, rows, at)
        else:
            self._saved()
            copied = snapshots.copy(self.detector, names, rows, at)
            self._hurry = threading.Event()
            self._saving = self._saver.submit(self._write_spread, copied, self._hurry)
            self._saving_at = self.detector.next_second or at
        self._last_snapshot = self.clock()
        self._snapshot_at = at

    def _saved(self) -> None:
        """Wait for the snapshots being written in the background, if any; log if that
        failed (the next minute's save tries again)."""
        saving, self._saving = self._saving, None
        if saving is None:
            return
        self._hurry.set()
        try:
            saving.result()
        except CliffwatchError as exc:
            log.error("could not save snapshots: %s", exc)

    def _write_spread(self, copied: list[snapshots.Copied], hurry: threading.Event) -> None:
        """(The snapshot thread.) Write ``copied`` a chunk at a time, spread over
        :data:`SNAPSHOT_SPREAD_S`, or at once from when ``hurry`` is set."""
        began = time.monotonic()
        for k, chunk in enumerate(copied):
            if k:
                hurry.wait(began + SNAPSHOT_SPREAD_S * k / len(copied) - time.monotonic())
            snapshots.write(self.store, [chunk])

    def minute_rates(self, metric: str, minutes: int = 30) -> list[float]:
        """``metric``'s events/s in each of its last ``minutes`` minutes, oldest first,
        the minute in progress last (see :meth:`Detector.minute_rates`; NaN: no data);
        empty for a metric this worker does not watch."""
        try:
            i = self.metrics.index(metric)
        except ValueError:
            return []
        return [float(r) for r in self.detector.minute_rates(i, minutes)]

    def _judged_rows(self) -> list[int]:
        """The metrics this worker decides for: all but those of shards whose lease
        lapsed (see :data:`LOST_GRACE_S`)."""
        if self.shards is None or not self._lost_since:
            return list(range(len(self.metrics)))
        shard_of = self.shards.shard_of
        return [i for i, m in enumerate(self.metrics) if shard_of(m) not in self._lost_since]

    def _save_snapshots(self, names: Sequence[str], rows: Sequence[int], at: int) -> None:
        self._saved()  # never overwritten by an older one still being written
        snapshots.save(self.store, self.detector, names, rows, at)

    def write_status(self, at: int, rows: Sequence[int] | None = None) -> None:
        """Publish the figures of the metrics at ``rows`` (default: every one judged
        here) for ``cliffwatch status``, as of second ``at``."""
        det = self.detector
        judged = det.judged()
        judge = {} if self.shards is None else {"judged_by": self.shards.token}
        states = {}
        for i in self._judged_rows() if rows is None else rows:
            m = self.metrics[i]
            if det.firing[i]:
                phase = "firing"
            elif judged[i]:
                phase = "ok"
            elif det.minutes_seen[i] < det.warmup_minutes:
                phase = "warming up"
            else:
                phase = "too quiet"
            states[m] = {
                "status": phase,
                "status_at": at,
                "now_score": round(float(det.score[i]), 3),
                "now_rate": _num(det.rate[i]),
                "now_baseline": _num(det.baseline[i]),
                "minutes_seen": int(det.minutes_seen[i]),
                "no_data_since": self.blind.no_data_since(m) or "",
                **judge,
            }
        self.store.set_states(states)  # one pipelined round trip per 10,000 metrics

    def _apply(self, transitions: list[Transition]) -> list[Alert]:
        out: list[Alert] = []
        if not self._deciding:  # a follower learns, and decides nothing
            return out
        try:
            self._decide(transitions, out)
        except LostLeadership as exc:
            log.warning("stopped deciding: %s", exc)
            self._acting = False
        return out

    def _remind(self, at: int) -> None:
        """Queue Slack reminders of the incidents still firing at second ``at`` (as the
        rules' ``reminder`` says); nothing on a follower."""
        every = self.rules.reminder_s
        if not self._deciding or every <= 0 or not self.metrics:
            return
        det = self.detector
        try:
            for i in np.flatnonzero(det.firing):
                try:
                    reminder = self.incidents.remind(
                        self.metrics[i], at, float(det.score[i]), float(det.rate[i]), every
                    )
                except LostShard as exc:
                    log.warning("%s", exc)
                    continue
                if reminder is not None and self.monitor is not None:
                    self.monitor.reminders.inc()
            reminded = self.blind.remind(at, every, det, self.metrics)
            if reminded and self.monitor is not None:
                self.monitor.reminders.inc(reminded)
        except LostLeadership as exc:
            log.warning("stopped deciding: %s", exc)
            self._acting = False

    def _check_blind(self, now: float, end: int) -> list[Alert]:
        """The "monitoring blind" incident (the leader's) and the "no data" incidents of
        the metrics this worker decides for (see :mod:`~cliffwatch.alerting.blind`)."""
        try:
            return self.blind.check(
                now, end, self.metrics, self.detector, whole_store=self._acting
            )
        except LostShard as exc:  # a lapsed shard: its metrics are dropped soon
            log.warning("not deciding: %s", exc)
            return []
        except LostLeadership as exc:
            log.warning("stopped deciding: %s", exc)
            self._acting = False
            return []

    def _decide(self, transitions: list[Transition], out: list[Alert]) -> None:
        for t in transitions:
            try:
                self._decide_one(t, out)
            except LostShard as exc:  # its metrics are dropped on the next tick
                log.warning("not deciding: %s", exc)

    def _decide_one(self, t: Transition, out: list[Alert]) -> None:
        metric = self.metrics[t.index]
        rule = self.rule_of[t.index]
        if t.state == "firing":
            out.append(
                self.incidents.fire(
                    metric, t.at, rule.severity, rule.threshold, t.score, t.rate, t.baseline
                )
            )
        else:
            alert = self.incidents.resolve(metric, t.at, t.score, t.rate)
            if alert is not None:
                out.append(alert)


def _quiet_since(state: dict[str, str], since: int) -> bool:
    """Whether the metric's incident (if any) neither opened nor closed at or after
    epoch second ``since``, by its alert ``state``."""
    try:
        last = max(int(state.get("started_at") or 0), int(state.get("resolved_at") or 0))
    except ValueError:
        return False
    return last < since


def _status_at(state: dict[str, str]) -> int:
    """The second up to which the metric has been judged, by the status its judge last
    wrote (see :meth:`Worker.write_status`); 0 if it has none."""
    try:
        return int(state.get("status_at") or 0)
    except ValueError:
        return 0


def _where_alerts_go(rules: RuleSet) -> tuple[object, ...]:
    """What of ``rules`` is read at start only: the notifiers and quiet hours."""
    own = sorted({(r.slack_channel, r.pagerduty) for r in rules.rules})
    return (rules.slack, rules.pagerduty, rules.quiet_hours, own)


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4g}"
