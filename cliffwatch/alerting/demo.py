"""``cliffwatch demo``: a small simulated shop, watched live by the real worker.

The shop's functions carry the real ``@event`` decorator; traffic threads call them at
Poisson rates; the real counter and flusher write to a store (an embedded in-process
Redis unless ``CLIFFWATCH_REDIS_URL`` is set); the real worker judges every second.
Half a minute in, the payment provider fails (``capture_payment`` raises, so its event
is not emitted): the page fires within seconds; when payments come back it resolves.

History is pre-filled (45 minutes of normal traffic) so the detector is warm at once;
the demo learns for 30 minutes of data instead of the worker's default day, so its
normal rate comes from the last hour only, without a daily cycle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable

import click
import numpy as np

import cliffwatch

from ..metrics.bus import shutdown
from ..metrics.store import Store
from ..rules.config import parse_rules
from .alert import Alert
from .worker import Worker

RATES = {"orders.created": 40.0, "payments.captured": 30.0, "users.registered": 6.0}
HISTORY_MINUTES = 45
WARMUP_MINUTES = 30
OUTAGE = ("payments.captured", 25, 55)  # metric, start and end (seconds into the demo)
BARS = " ▁▂▃▄▅▆▇█"


class PaymentProviderDown(Exception):
    """The simulated payment provider refused the capture."""


class Shop:
    """The simulated app: each function is instrumented with the real decorator."""

    def __init__(self) -> None:
        self.payments_down = False

    @cliffwatch.event("orders.created")
    def place_order(self) -> str:
        return "order"

    @cliffwatch.event("payments.captured")
    def capture_payment(self) -> str:
        if self.payments_down:
            raise PaymentProviderDown("payment provider answers 503")
        return "captured"

    @cliffwatch.event("users.registered")
    def register_user(self) -> str:
        return "user"


def _store() -> tuple[Store, str]:
    url = os.environ.get("CLIFFWATCH_REDIS_URL")
    prefix = f"cliffwatch-demo-{os.getpid()}:"
    if url:
        return Store.from_url(url, prefix=prefix), "Redis from CLIFFWATCH_REDIS_URL"
    import fakeredis

    return Store(fakeredis.FakeRedis(), prefix=prefix), "embedded in-process store"


def _rules_text() -> str:
    text = '[defaults]\nseverity = "page"\n\n'
    for metric in RATES:
        text += f'[[rule]]\nmetric = "{metric}"\n\n'
    if os.environ.get("CLIFFWATCH_SLACK_WEBHOOK_URL") or os.environ.get("CLIFFWATCH_SLACK_TOKEN"):
        channel = os.environ.get("CLIFFWATCH_SLACK_CHANNEL", "#cliffwatch-demo")
        text += f'[slack]\nchannel = "{channel}"\n'
        if os.environ.get("CLIFFWATCH_SLACK_BASE_URL"):
            text += f'base_url = "{os.environ["CLIFFWATCH_SLACK_BASE_URL"]}"\n'
    if os.environ.get("CLIFFWATCH_PAGERDUTY_ROUTING_KEY"):
        text += '\n[pagerduty]\nsource = "cliffwatch-demo"\n'
        if os.environ.get("CLIFFWATCH_PAGERDUTY_URL"):
            text += f'url = "{os.environ["CLIFFWATCH_PAGERDUTY_URL"]}"\n'
    return text


def _prefill(store: Store, end: int, rng: np.random.Generator) -> None:
    """Write HISTORY_MINUTES of ordinary traffic for every metric up to second ``end``."""
    start = end - HISTORY_MINUTES * 60
    seconds: dict[int, dict[str, int]] = {}
    for metric, rate in RATES.items():
        burst = np.repeat(rng.gamma(25.0, 1 / 25.0, HISTORY_MINUTES * 6), 10)
        for k, count in enumerate(rng.poisson(rate * burst)):
            seconds.setdefault(start + k, {})[metric] = int(count)
    store.write_counts(seconds)


def _traffic(
    fn: Callable[[], object], rate: float, stop: threading.Event, speed: float, seed: int
) -> None:
    rnd = random.Random(seed)
    while not stop.is_set():
        stop.wait(rnd.expovariate(rate) / speed)
        # when the provider is down the shop shows the customer an error: no event
        with contextlib.suppress(PaymentProviderDown):
            fn()


def run_demo(speed: float = 1.0, seconds: int = 90) -> int:
    """Run the demo; return the exit status (0 when the outage paged and resolved)."""
    store, where = _store()
    rules = parse_rules(_rules_text(), path="<demo rules>", env=os.environ)
    real0 = float(int(time.time()) + 1)  # start on a whole second: no partial first second
    sim0 = real0

    def clock() -> float:
        return sim0 + (time.time() - real0) * speed

    alerts: list[Alert] = []
    logging.getLogger("cliffwatch.alerting").setLevel(logging.ERROR)  # shown below instead
    _prefill(store, int(sim0), np.random.default_rng(1))
    time.sleep(max(0.0, real0 - time.time()))
    cliffwatch.configure(store=store, clock=clock, flush_interval=1.0 / speed)
    worker = Worker(
        store, rules, clock=clock, warmup_minutes=WARMUP_MINUTES, on_alert=alerts.append
    )
    shop = Shop()
    stop = threading.Event()
    jobs = {
        "orders.created": shop.place_order,
        "payments.captured": shop.capture_payment,
        "users.registered": shop.register_user,
    }
    threads = [
        threading.Thread(
            target=_traffic, args=(jobs[m], r, stop, speed, k), name=f"shop-{m}", daemon=True
        )
        for k, (m, r) in enumerate(RATES.items())
    ]
    click.secho("cliffwatch demo", bold=True)
    click.echo(f"  a simulated shop emitting {', '.join(RATES)} through @event,")
    click.echo(f"  counted in-process and flushed every second to the {where};")
    click.echo(
        f"  {HISTORY_MINUTES} min of history pre-filled; the real worker judges each closed second."
    )
    click.echo(
        f"  At {OUTAGE[1]} s the payment provider goes down; at {OUTAGE[2]} s it comes back.\n"
    )
    worker.start(clock())
    for t in threads:
        t.start()
    history: dict[str, list[float]] = {m: [] for m in RATES}
    shown = 0
    fired_at = resolved_at = None
    try:
        while clock() - sim0 < seconds:
            now = clock()
            elapsed = now - sim0
            shop.payments_down = OUTAGE[1] <= elapsed < OUTAGE[2]
            worker.tick(now)
            det = worker.detector
            rates = det.recent_rate(5)
            parts = []
            for i, m in enumerate(worker.metrics):
                rate = rates[i] if np.isfinite(rates[i]) else 0.0
                history[m].append(rate)
                spark = "".join(BARS[min(8, int(8 * v / (2 * RATES[m])))] for v in history[m][-12:])
                state = click.style("PAGED", fg="red", bold=True) if det.firing[i] else "ok"
                parts.append(f"{m} {rate:6.1f}/s {spark:<12} {state:<5}")
            note = click.style(" provider down", fg="yellow") if shop.payments_down else ""
            click.echo(f"[{elapsed:5.0f}s] " + " | ".join(parts) + note)
            for a in alerts[shown:]:
                color = "red" if a.state == "firing" else "green"
                click.secho(
                    f"  >>> {a.state.upper()} {a.severity}: {a.metric} at "
                    f"{a.rate:.1f}/s against {a.baseline:.1f}/s normal "
                    f"(score {a.score:.1f}, threshold {a.threshold:g}), "
                    f"{a.at - sim0 - OUTAGE[1]:+.0f} s after the outage began"
                    if a.state == "firing"
                    else f"  >>> RESOLVED: {a.metric} back at {a.rate:.1f}/s "
                    f"({a.at - sim0 - OUTAGE[2]:+.0f} s after recovery)",
                    fg=color,
                    bold=True,
                )
                if a.state == "firing":
                    fired_at = a.at
                else:
                    resolved_at = a.at
            shown = len(alerts)
            time.sleep(max(0.0, (1.0 - (clock() - sim0) % 1.0 + 0.3) / speed))
    finally:
        stop.set()
        shutdown(timeout=2.0)
    expected = [(OUTAGE[0], "firing"), (OUTAGE[0], "resolved")]
    ok = [(a.metric, a.state) for a in alerts] == expected
    click.echo()
    if ok and fired_at is not None and resolved_at is not None:
        click.secho(
            f"One page {fired_at - sim0 - OUTAGE[1]:.0f} s after the outage began, "
            f"one resolve {resolved_at - sim0 - OUTAGE[2]:.0f} s after recovery; "
            "nothing else paged.",
            bold=True,
        )
    else:
        click.secho("The outage did not page and resolve as expected.", fg="red", bold=True)
    return 0 if ok else 1
