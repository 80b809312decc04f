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

from ..errors import CliffwatchError, ConfigError
from ..metrics.store import Store
from ..rules.config import Rule, RuleSet
from ..rules.detector import HISTORY_S, WARMUP_MINUTES, Detector, Transition
from .alert import Alert
from .incidents import Incidents, Route
from .notifiers import Notifier, PagerDutyNotifier, SlackNotifier
from .silences import Silences

log = logging.getLogger("cliffwatch.worker")

WATERMARK_S = 1.2  # a second is judged once it has been closed this long
SNAPSHOT_EVERY_S = 300
RESCAN_EVERY_S = 60  # how often glob rules are matched against new metric names
STATUS_EVERY_S = 5
CATCH_UP_MAX_S = 2 * 3600  # after a long outage of the worker, replay at most this much


def build_notifiers(rules: RuleSet) -> dict[str, Notifier]:
    """The notifiers a rules file asks for (secrets already resolved from the
    environment). Raises :class:`ConfigError` for unusable settings."""
    out: dict[str, Notifier] = {}
    slack = rules.slack
    if slack is not None and slack.token and slack.channel:
        out["slack"] = SlackNotifier(
            token=slack.token, channel=slack.channel, base_url=slack.base_url
        )
    elif slack is not None and slack.webhook_url:
        out["slack"] = SlackNotifier(webhook_url=slack.webhook_url)
    pd = rules.pagerduty
    if pd is not None and pd.routing_key:
        out["pagerduty"] = PagerDutyNotifier(
            routing_key=pd.routing_key, url=pd.url, source=pd.source
        )
    return out


class Worker:
    """Judges the metrics a rule set names, against one store.

    :param store: the Redis the apps flush to.
    :param rules: which metrics, and how each alerts.
    :param notifiers: ``{"slack": ..., "pagerduty": ...}``; default: built from ``rules``.
    :param clock: epoch seconds (tests and the demo pass their own).
    :param on_alert: called with every alert as it is decided.
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
            Route(build_notifiers(rules) if notifiers is None else notifiers),
            on_alert=on_alert,
            clock=clock,
            silences=Silences(store, clock=clock),
        )
        self.metrics: list[str] = []
        self.rule_of: list[Rule] = []
        self.detector = Detector(0, warmup_minutes=warmup_minutes)
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
        self._rescan(now, force=True)

    def tick(self, now: float | None = None) -> list[Alert]:
        """Judge every second closed since the last tick; return the alerts decided."""
        now = self.clock() if now is None else now
        end = int(math.floor(now - self.watermark))  # seconds before this are closed
        alerts: list[Alert] = []
        if now - self._last_rescan >= RESCAN_EVERY_S:
            self._rescan(now)
        nxt = self.detector.next_second
        if nxt is None or not self.metrics:
            return alerts
        start = max(nxt, end - CATCH_UP_MAX_S)
        if end > start:
            counts = self.store.read_counts(self.metrics, start, end)
            alerts += self._apply(self.detector.update(counts, start))
        self.incidents.retry_pending(self.metrics)
        if end % 60 == 0 and now - self._last_snapshot >= SNAPSHOT_EVERY_S:
            self.save_snapshots(end)
        if now - self._last_status >= STATUS_EVERY_S:
            self.write_status(end)
            self._last_status = now
        return alerts

    def run(self) -> None:
        """Tick once a second until :meth:`stop` (or SIGTERM/SIGINT: the first finishes
        the tick and stops, a second exits at once)."""
        self._install_signals()
        self.start()
        log.info("watching %d metrics", len(self.metrics))
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except CliffwatchError as exc:  # Redis away: say so, try again next tick
                    log.error("tick failed: %s", exc)
                now = self.clock()
                self._stop.wait(1.0 - (now - self.watermark) % 1.0 + 0.05)
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to stop after the current tick."""
        self._stop.set()

    def close(self) -> None:
        """Save what the metrics learnt (when at a whole minute) and disconnect."""
        try:
            nxt = self.detector.next_second
            if nxt is not None and nxt % 60 == 0 and self.metrics:
                self.save_snapshots(nxt)
        except CliffwatchError as exc:
            log.error("could not save snapshots: %s", exc)

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
        snaps = {m: self._load_snapshot(m) for m in names if m not in old}
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

    def _restore_incidents(self, det: Detector, names: Sequence[str]) -> None:
        for i, m in enumerate(names):
            st = self.incidents.state(m)
            if st.get("state") == "firing":
                det.firing[i] = True
                det.frozen[i] = float(st.get("baseline", "nan"))

    def _load_snapshot(self, metric: str) -> dict[str, np.ndarray] | None:
        blob = self.store.get_blob(metric)
        if blob is None:
            return None
        try:
            with np.load(io.BytesIO(blob)) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as exc:
            log.warning("ignoring unreadable snapshot of %s: %s", metric, exc)
            return None

    def save_snapshots(self, at: int) -> None:
        """Store what every metric has learnt, as of epoch second ``at``."""
        for i, m in enumerate(self.metrics):
            buf = io.BytesIO()
            np.savez(buf, at=np.int64(at), **self.detector.snapshot(i))
            self.store.set_blob(m, buf.getvalue())
        self._last_snapshot = self.clock()

    def write_status(self, at: int) -> None:
        """Publish each metric's figures for ``cliffwatch status``."""
        det = self.detector
        judged = det.judged()
        for i, m in enumerate(self.metrics):
            if det.firing[i]:
                phase = "firing"
            elif judged[i]:
                phase = "ok"
            elif det.minutes_seen[i] < det.warmup_minutes:
                phase = "warming up"
            else:
                phase = "too quiet"
            self.store.set_state(
                m,
                {
                    "status": phase,
                    "status_at": at,
                    "now_score": round(float(det.score[i]), 3),
                    "now_rate": _num(det.rate[i]),
                    "now_baseline": _num(det.baseline[i]),
                    "minutes_seen": int(det.minutes_seen[i]),
                },
            )

    def _apply(self, transitions: list[Transition]) -> list[Alert]:
        out: list[Alert] = []
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
        return out


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4g}"
