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

Several workers may run against one Redis: ``run()`` takes part in a leader election
(:mod:`cliffwatch.alerting.leader`). Only the leader opens and resolves incidents and
delivers them (through the outbox, :mod:`cliffwatch.alerting.outbox`, one delivery
thread per notifier); a follower ticks and learns like the leader, so when it takes over
it compares what its detector says with the open incidents and carries on. A worker
driven by ``tick()`` without a ``leader`` acts alone and delivers in the ticking thread.

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

import io
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import numpy as np

from ..errors import CliffwatchError, ConfigError, RulesError
from ..metrics.store import Store
from ..rules.config import Rule, RuleSet, load_rules
from ..rules.detector import HISTORY_S, WARMUP_MINUTES, Detector, Transition
from .alert import BLIND_METRIC, Alert, no_data_incident
from .alertmanager import ALERTMANAGER, WEBHOOK, AlertmanagerNotifier, WebhookNotifier, hold_for
from .blind import BlindWatch
from .incidents import Incidents, Route, pagerduty_service_notifier, slack_channel_notifier
from .leader import Leader, LostLeadership
from .notifiers import Notifier, PagerDutyNotifier, SlackNotifier
from .quiet import QuietHold
from .selfmetrics import WorkerMetrics
from .silences import Silences

log = logging.getLogger("cliffwatch.worker")

WATERMARK_S = 1.2  # a second is judged once every app flushed it, or this long after it
TICK_PHASE_S = 0.1  # ticks run this long after each second boundary, after the flushes
EMITTER_LIVE_S = 5.0  # an app process that flushed this recently is waited for
SNAPSHOT_EVERY_S = 300
RESCAN_EVERY_S = 60  # how often glob rules are matched against new metric names
STATUS_EVERY_S = 5
CATCH_UP_MAX_S = 2 * 3600  # after a long outage of the worker, replay at most this much
HEARTBEAT_TTL_S = 10.0
"""The heartbeat key expires this long after the last tick: then nobody is ticking."""


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
        self._last_snapshot = -math.inf
        self._last_status = -math.inf

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
        end = self._closed_end(now)  # seconds before this are judged
        alerts: list[Alert] = []
        if self._reload.is_set():
            self._reload.clear()
            self.reload_rules(now)
        if now - self._last_rescan >= RESCAN_EVERY_S:
            self._rescan(now)
        self._follow_leader()
        if self._acting:
            self.quiet.flush(now)  # the quiet-hours digest, once the window is over
        nxt = self.detector.next_second
        if nxt is None or not self.metrics:
            return alerts
        start = max(nxt, end - CATCH_UP_MAX_S)
        if end > start:
            counts = self.store.read_counts(self.metrics, start, end)
            alerts += self._apply(self.detector.update(counts, start))
        self._remind(end)
        self.incidents.retry_pending(self.metrics)
        if self._acting:  # a follower decides nothing
            alerts += self._check_blind(now, end)
        if end % 60 == 0 and now - self._last_snapshot >= SNAPSHOT_EVERY_S and self._acting:
            self.save_snapshots(end)
        if now - self._last_status >= STATUS_EVERY_S and self._acting:
            self.write_status(end)
            self._last_status = now
        return alerts

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
        self.leader.start()
        self.start()
        self.incidents.outbox.start()
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
                self._stop.wait(1.0 - now % 1.0 + TICK_PHASE_S)  # just after the flushes
        finally:
            self.close()

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
            if nxt is not None and nxt % 60 == 0 and self.metrics and self._acting:
                self.save_snapshots(nxt)
        except CliffwatchError as exc:
            log.error("could not save snapshots: %s", exc)
        self.incidents.outbox.stop()
        if self.leader is not None:
            self.leader.stop()
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
        """Match the rules against the known metric names; start watching new ones."""
        self._last_rescan = now
        known = self.store.metric_names() if any(r.is_glob for r in self.rules.rules) else []
        names = self.rules.metrics(known)
        if not force and names == self.metrics:
            return
        self._watch(names, int(math.floor(now - self.watermark)))

    def _watch(self, names: Sequence[str], end: int) -> None:
        """Build a detector for ``names``: keep what running metrics learnt, restore
        snapshots of new ones, and refill their history up to second ``end``."""
        names = list(names)
        old = {m: i for i, m in enumerate(self.metrics)}
        rules = [self.rules.match(m) for m in names]
        det = Detector(
            len(names),
            [r.threshold if r else -3.0 for r in rules],
            [r.min_rate if r else 0.0 for r in rules],
            self.warmup_minutes,
        )
        # everything starts at a whole minute, HISTORY_S before the snapshot or now
        new = [m for m in names if m not in old]
        snaps = dict(zip(new, map(_read_snapshot, new, self.store.get_blobs(new)), strict=True))
        at = [int(s["at"]) for s in snaps.values() if s is not None]
        base = self.detector.next_second if old and self.detector.next_second else None
        if base is None:
            base = max(at) if at else end - end % 60
        restored = False
        for i, m in enumerate(names):
            if m in old:
                det.restore(i, self.detector.snapshot(old[m]))
                restored = True
            elif snaps.get(m) is not None and int(snaps[m]["at"]) == base:
                det.restore(i, snaps[m])
                restored = True
        self._restore_incidents(det, names)
        acting = self._acting
        if restored:
            hist_start = base - HISTORY_S
            det.prime(self.store.read_counts(names, hist_start, base), hist_start)
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

    def _reconcile(self, det: Detector, names: Sequence[str], at: int) -> None:
        """After learning from history: open an incident for a metric that is down now,
        close one that recovered while nobody watched."""
        for i, m in enumerate(names):
            st = self.incidents.state(m)
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
            log.warning("following: deciding and delivering nothing")
            return
        self._acting = True
        self.blind.reset()  # another worker may have opened or resolved no-data incidents
        try:
            nxt = self.detector.next_second
            if nxt is not None and self.metrics:
                self._reconcile(self.detector, self.metrics, nxt)
            watched = [*self.metrics, BLIND_METRIC, *map(no_data_incident, self.metrics)]
            self.incidents.outbox.requeue(self.incidents.undelivered(watched))
        except LostLeadership:
            self._acting = False
        except CliffwatchError:
            self._acting = False  # Redis away: take over on a later tick
            raise

    def _restore_incidents(self, det: Detector, names: Sequence[str]) -> None:
        for i, m in enumerate(names):
            st = self.incidents.state(m)
            if st.get("state") == "firing":
                det.firing[i] = True
                det.frozen[i] = float(st.get("baseline", "nan"))

    def save_snapshots(self, at: int) -> None:
        """Store what every metric has learnt, as of epoch second ``at``."""
        blobs = {}
        for i, m in enumerate(self.metrics):
            buf = io.BytesIO()
            np.savez(buf, at=np.int64(at), **self.detector.snapshot(i))
            blobs[m] = buf.getvalue()
        self.store.set_blobs(blobs)  # one pipelined round trip per 10,000 metrics
        self._last_snapshot = self.clock()

    def minute_rates(self, metric: str, minutes: int = 30) -> list[float]:
        """``metric``'s events/s in each of its last ``minutes`` minutes, oldest first,
        the minute in progress last (see :meth:`Detector.minute_rates`; NaN: no data);
        empty for a metric this worker does not watch."""
        try:
            i = self.metrics.index(metric)
        except ValueError:
            return []
        return [float(r) for r in self.detector.minute_rates(i, minutes)]

    def write_status(self, at: int) -> None:
        """Publish each metric's figures for ``cliffwatch status``."""
        det = self.detector
        judged = det.judged()
        states = {}
        for i, m in enumerate(self.metrics):
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
            }
        self.store.set_states(states)  # one pipelined round trip per 10,000 metrics

    def _apply(self, transitions: list[Transition]) -> list[Alert]:
        out: list[Alert] = []
        if not self._acting:  # a follower learns, and decides nothing
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
        if not self._acting or every <= 0 or not self.metrics:
            return
        det = self.detector
        try:
            for i in np.flatnonzero(det.firing):
                reminder = self.incidents.remind(
                    self.metrics[i], at, float(det.score[i]), float(det.rate[i]), every
                )
                if reminder is not None and self.monitor is not None:
                    self.monitor.reminders.inc()
            reminded = self.blind.remind(at, every, det, self.metrics)
            if reminded and self.monitor is not None:
                self.monitor.reminders.inc(reminded)
        except LostLeadership as exc:
            log.warning("stopped deciding: %s", exc)
            self._acting = False

    def _check_blind(self, now: float, end: int) -> list[Alert]:
        """The "monitoring blind" and "no data" incidents (see
        :mod:`~cliffwatch.alerting.blind`), decided by the acting worker."""
        try:
            return self.blind.check(now, end, self.metrics, self.detector)
        except LostLeadership as exc:
            log.warning("stopped deciding: %s", exc)
            self._acting = False
            return []

    def _decide(self, transitions: list[Transition], out: list[Alert]) -> None:
        for t in transitions:
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


def _where_alerts_go(rules: RuleSet) -> tuple[object, ...]:
    """What of ``rules`` is read at start only: the notifiers and quiet hours."""
    own = sorted({(r.slack_channel, r.pagerduty) for r in rules.rules})
    return (rules.slack, rules.pagerduty, rules.quiet_hours, own)


def _read_snapshot(metric: str, blob: bytes | None) -> dict[str, np.ndarray] | None:
    """A metric's stored snapshot as arrays; ``None`` if there is none or it is unreadable."""
    if blob is None:
        return None
    try:
        with np.load(io.BytesIO(blob)) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        log.warning("ignoring unreadable snapshot of %s: %s", metric, exc)
        return None


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4g}"
