"""The worker's own health as Prometheus series, on an optional ``/metrics`` endpoint.

``cliffwatch worker --metrics-port PORT`` serves, with ``prometheus_client`` (the
``cliffwatch[metrics]`` extra):

==========================================  =========  =====================================
series                                      type       what
==========================================  =========  =====================================
``cliffwatch_worker_tick_seconds``          histogram  how long each tick took
``cliffwatch_worker_tick_errors_total``     counter    ticks that failed (Redis away)
``cliffwatch_worker_lag_seconds``           gauge      now minus the end of the last second
                                                       judged (about the watermark when
                                                       all is well)
``cliffwatch_worker_metrics_watched``       gauge      metrics the worker judges
``cliffwatch_worker_alerts_total``          counter    alerts decided, by ``state``
                                                       (``firing``, ``resolved``)
``cliffwatch_worker_reminders_total``       counter    Slack reminders queued
``cliffwatch_worker_deliveries_total``      counter    delivery tries, by ``channel`` and
                                                       ``outcome`` (``sent``, ``failed``,
                                                       ``dropped``)
``cliffwatch_worker_leader``                gauge      1 while this worker leads, else 0
==========================================  =========  =====================================
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .alert import Alert

MISSING = (
    "the worker's /metrics endpoint needs prometheus_client: pip install 'cliffwatch[metrics]'"
)
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WorkerMetrics:
    """The series above, in a registry of their own (so several workers in one process,
    as in tests, do not collide).

    Raises :class:`~cliffwatch.errors.ConfigError` with a one-line message when
    ``prometheus_client`` is not installed. Recording never raises.
    """

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ConfigError(MISSING) from None
        self.registry = CollectorRegistry()
        r = self.registry
        self.tick_seconds = Histogram(
            "cliffwatch_worker_tick_seconds",
            "Duration of a worker tick.",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.tick_errors = Counter(
            "cliffwatch_worker_tick_errors", "Ticks that failed.", registry=r
        )
        self.lag = Gauge(
            "cliffwatch_worker_lag_seconds",
            "Now minus the end of the last second judged.",
            registry=r,
        )
        self.watched = Gauge(
            "cliffwatch_worker_metrics_watched", "Metrics the worker judges.", registry=r
        )
        self.alerts = Counter("cliffwatch_worker_alerts", "Alerts decided.", ["state"], registry=r)
        self.reminders = Counter(
            "cliffwatch_worker_reminders", "Slack reminders queued.", registry=r
        )
        self.deliveries = Counter(
            "cliffwatch_worker_deliveries",
            "Delivery tries.",
            ["channel", "outcome"],
            registry=r,
        )
        self.leader = Gauge("cliffwatch_worker_leader", "1 while this worker leads.", registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def ticked(
        self,
        seconds: float,
        lag: float | None,
        watched: int,
        leads: bool,
        alerts: Sequence[Alert],
    ) -> None:
        """Record one tick that took ``seconds``."""
        self.tick_seconds.observe(seconds)
        if lag is not None:
            self.lag.set(lag)
        self.watched.set(watched)
        self.leader.set(1 if leads else 0)
        for alert in alerts:
            self.alerts.labels(state=alert.state).inc()

    def delivery(self, channel: str, outcome: str) -> None:
        """Count one delivery try (``sent``, ``failed`` or ``dropped``)."""
        self.deliveries.labels(channel=channel, outcome=outcome).inc()

    def serve(self, port: int, addr: str = "") -> int:
        """Serve ``/metrics`` on ``addr:port`` (all interfaces by default; port 0 picks a
        free one) from a daemon thread; return the port. Raises
        :class:`~cliffwatch.errors.ConfigError` if the port cannot be bound."""
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(
                port, addr or "0.0.0.0", registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on port {port}: {exc}") from None
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving (nothing if not serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
