"""`cliffwatch status`: every metric Redis knows with the state a worker gave it (firing,
silenced, warming up, not watched, no data), its rates, score and last ten minutes, plus
the apps flushing and the active silences; as text, as JSON, and refreshed by --watch."""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FakeClock

from cliffwatch.alerting import worker as worker_module
from cliffwatch.alerting.cli import main
from cliffwatch.alerting.silences import Silences
from cliffwatch.alerting.status import (
    NO_DATA_CHAR,
    SPARK_MINUTES,
    collect,
    per_minute_rates,
    render,
    sparkline,
    watch,
)
from cliffwatch.alerting.worker import Worker
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import parse_rules

RATE = 40
ORDERS, PAYMENTS, SIGNUPS, REVIEWS = (
    "orders.created", "payments.captured", "signups.completed", "reviews.posted")
RULES = f"""
[[rule]]
metric = "{ORDERS}"

[[rule]]
metric = "payments.*"

[[rule]]
metric = "{SIGNUPS}"
"""


@pytest.fixture(autouse=True)
def _no_cliffwatch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the caller's CLIFFWATCH_* settings."""
    for name in list(os.environ):
        if name.startswith("CLIFFWATCH_"):
            monkeypatch.delenv(name)


# -- pure parts -----------------------------------------------------------------------


def test_sparkline_scales_from_zero_and_marks_no_data() -> None:
    """Bars go from zero (lowest) to the largest value (highest); None is a dot."""
    assert sparkline([0.0, 5.0, 10.0, None]) == "▁▅█" + NO_DATA_CHAR
    assert sparkline([3.0, 3.0]) == "██"
    assert sparkline([0.0, None]) == "▁" + NO_DATA_CHAR
    assert sparkline([]) == ""


def test_per_minute_rates_leave_out_seconds_without_data() -> None:
    """A minute's rate is the mean of its seconds that have data; a minute with none is
    None, and a minute of zeros is 0."""
    counts = np.full((1, 180), np.nan)
    counts[0, :30] = 4.0
    counts[0, 120:] = 0.0
    assert per_minute_rates(counts, 3) == [[4.0, None, 0.0]]


def test_watch_redraws_until_stopped() -> None:
    """`watch` clears and redraws on each refresh, and returns once told to stop."""
    out = io.StringIO()
    stop = threading.Event()
    draws: list[int] = []

    def draw() -> str:
        draws.append(1)
        if len(draws) == 3:
            stop.set()
        return f"frame {len(draws)}"

    watch(draw, out, interval=0.01, stop=stop, clear="<clear>")
    assert out.getvalue() == "<clear>frame 1\n<clear>frame 2\n<clear>frame 3\n"


# -- against Redis and a worker -------------------------------------------------------


def run_shop(store: Store, rules_text: str) -> tuple[Worker, FakeClock, str]:
    """A worker on a fake clock that ends at the wall clock: orders.created and
    payments.captured (inside a silence) fall to zero and fire, signups.completed has
    only five minutes of history (warming up), reviews.posted has no rule. Return the
    worker, its clock and the silence's id."""
    rng = np.random.default_rng(7)
    run_s = 240
    clock = FakeClock(math.floor(time.time()) - run_s + 0.5)
    start = int(clock.now)
    history = {start - k: {ORDERS: int(rng.poisson(RATE)), PAYMENTS: int(rng.poisson(RATE))}
               for k in range(1, 40 * 60 + 1)}
    for k in range(1, 5 * 60 + 1):
        history[start - k][SIGNUPS] = int(rng.poisson(RATE))
    store.write_counts(history)
    worker = Worker(store, parse_rules(rules_text, "<status rules>", env={}), notifiers={},
                    clock=clock, warmup_minutes=30)
    worker.start()
    silence = Silences(store, clock=clock).add("payments.*", 3600, "deploy", "erin")

    def second(rate: int) -> None:
        sec = int(clock.now)
        store.write_counts({sec: {ORDERS: int(rng.poisson(rate)),
                                  PAYMENTS: int(rng.poisson(rate)),
                                  SIGNUPS: int(rng.poisson(RATE)),
                                  REVIEWS: 2}}, emitter="shop-1:4242", now=sec)
        clock.advance(1.0)
        worker.tick()

    for _ in range(120):
        second(RATE)
    for _ in range(3600):  # the outage, until the fake clock meets the wall clock
        if clock.now >= time.time():
            break
        second(0)
    worker.write_status(int(clock.now - worker.watermark))
    return worker, clock, silence.id


def test_status_json_gives_each_metric_its_state(
    store: Store, redis_url: str, prefix: str
) -> None:
    """`status --json` lists every metric Redis knows: firing, silenced (its incident
    started inside a silence), warming up, not watched; with rates, score, the open
    incident, ten minutes of rates and a sparkline; plus the emitter and the silence."""
    _, _, silence_id = run_shop(store, RULES)
    result = CliRunner().invoke(main, ["status", "--json"], env={
        "CLIFFWATCH_REDIS_URL": redis_url, "CLIFFWATCH_PREFIX": prefix})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {r["metric"]: r for r in data["metrics"]}
    assert {m: r["status"] for m, r in rows.items()} == {
        ORDERS: "firing", PAYMENTS: "silenced", SIGNUPS: "warming up",
        REVIEWS: "not watched"}

    orders, payments = rows[ORDERS], rows[PAYMENTS]
    assert orders["incident"].startswith(f"{ORDERS}@") and not orders["incident_silenced"]
    assert orders["incident_started_at"] == int(orders["incident"].split("@")[1])
    assert orders["score"] <= -3 and 30 < orders["baseline"] < 50
    assert orders["rate"] < orders["baseline"] / 4
    assert orders["silenced_by"] == "" and orders["status_age_s"] <= 12
    assert payments["incident_silenced"] and payments["silenced_by"] == silence_id
    assert len(orders["rates_per_minute"]) == SPARK_MINUTES
    assert orders["rates_per_minute"][-1] == 0.0 and orders["rates_per_minute"][0] > 30
    assert len(orders["sparkline"]) == SPARK_MINUTES and orders["sparkline"][-1] == "▁"
    assert rows[REVIEWS]["rate"] is None and rows[REVIEWS]["rates_per_minute"][-1] == 2.0
    assert 0 < rows[SIGNUPS]["minutes_seen"] < 30

    [emitter] = data["emitters"]
    assert emitter["name"] == "shop-1:4242" and emitter["age_s"] <= 5
    [silence] = data["silences"]
    assert (silence["id"], silence["pattern"], silence["created_by"]) == (
        silence_id, "payments.*", "erin")
    assert 0 < silence["remaining_s"] <= 3600


def test_status_text_and_no_data_when_the_worker_stops(store: Store) -> None:
    """The text view has a header (emitters, silences) and a line per metric with its
    state and sparkline; seen later with the worker stopped, watched metrics have no
    data, and an ended silence is gone."""
    _, _, silence_id = run_shop(store, RULES)
    text = render(collect(store), "Redis at redis://:***@example:6379/0")
    assert "redis://:***@example:6379/0" in text
    assert "emitters (1): shop-1:4242" in text
    assert f"{silence_id}  payments.*  until " in text and "erin: deploy" in text
    metrics = (ORDERS, PAYMENTS, SIGNUPS, REVIEWS)
    lines = {line.split()[0]: line for line in text.splitlines()
             if line.split() and line.split()[0] in metrics}
    assert " firing " in lines[ORDERS] and " silenced " in lines[PAYMENTS]
    assert " warming up " in lines[SIGNUPS] and " not watched " in lines[REVIEWS]
    assert "▁" in lines[ORDERS]

    later = collect(store, now=time.time() + 2 * 3600)
    assert {m.metric: m.status for m in later.metrics} == {
        ORDERS: "no data", PAYMENTS: "no data", SIGNUPS: "no data", REVIEWS: "not watched"}
    assert later.silences == []


def test_a_metric_whose_apps_stopped_reporting_is_no_data_in_text_and_json(
    store: Store, redis_url: str, prefix: str
) -> None:
    """A metric whose "no data" alert the worker has open shows as `no data`, with since
    when, in the text view and in `status --json` (`no_data_since`), even while older
    counts of it are still within the last minute."""
    now = math.floor(time.time())
    store.write_counts({now - k: {ORDERS: RATE, SIGNUPS: RATE} for k in range(30, 90)})
    store.write_counts({now - k: {SIGNUPS: RATE} for k in range(1, 30)})
    store.set_state(ORDERS, {"status": "ok", "status_at": now - 1, "no_data_since": now - 19})
    store.set_state(SIGNUPS, {"status": "ok", "status_at": now - 1, "no_data_since": ""})
    overview = collect(store, now=now)
    rows = {m.metric: m for m in overview.metrics}
    assert (rows[ORDERS].status, rows[ORDERS].no_data_since) == ("no data", now - 19)
    assert (rows[SIGNUPS].status, rows[SIGNUPS].no_data_since) == ("ok", None)
    [line] = [x for x in render(overview).splitlines() if x.startswith(ORDERS)]
    assert " no data " in line and "(19s, no data: its apps stopped reporting)" in line

    result = CliRunner().invoke(main, ["status", "--json", "--redis-url", redis_url,
                                       "--prefix", prefix])
    assert result.exit_code == 0, result.output
    shown = {m["metric"]: m for m in json.loads(result.output)["metrics"]}
    assert shown[ORDERS]["status"] == "no data"
    assert shown[ORDERS]["no_data_since"] == now - 19
    assert shown[SIGNUPS]["no_data_since"] is None


def test_status_of_an_empty_redis(redis_url: str, prefix: str) -> None:
    """With nothing flushed yet, `status` says so, and `--json` has empty lists."""
    env = {"CLIFFWATCH_REDIS_URL": redis_url, "CLIFFWATCH_PREFIX": prefix}
    text = CliRunner().invoke(main, ["status"], env=env)
    assert text.exit_code == 0 and "no metrics yet" in text.stdout
    data = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    assert (data["metrics"], data["emitters"], data["silences"]) == ([], [], [])


def test_status_never_shows_the_redis_password() -> None:
    """`status` against an unreachable Redis whose URL has a password exits 1 with one
    line, the password masked."""
    result = CliRunner().invoke(main, ["status", "--watch", "--redis-url",
                                       "redis://:s3cretpw@127.0.0.1:1/0"])
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: PING failed on Redis at redis://:***@127.0.0.1:1/0: ")
    assert "s3cretpw" not in result.output


def test_status_says_whether_a_worker_is_ticking(
    store: Store, redis_url: str, prefix: str
) -> None:
    """The dead-man's switch: with no heartbeat ever, `status` says NOT TICKING (never);
    right after a leader's tick it says ticking; once the heartbeat has expired or is
    stale it says NOT TICKING with how long ago the last tick was; `--json` carries it."""
    env = {"CLIFFWATCH_REDIS_URL": redis_url, "CLIFFWATCH_PREFIX": prefix}
    never = CliRunner().invoke(main, ["status"], env=env)
    assert never.exit_code == 0 and "worker: NOT TICKING (never)" in never.stdout
    data = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    assert data["worker"] == {"ticking": False, "last_tick": None, "last_tick_age_s": None}

    worker, clock, _ = run_shop(store, RULES)  # ends with a tick at the wall clock
    now = time.time()
    beat = collect(store, now=now).worker
    assert beat is not None and beat.ticking and beat.last_tick_age_s is not None
    assert beat.last_tick_age_s <= 2
    text = CliRunner().invoke(main, ["status"], env=env).stdout
    assert "worker: ticking (last tick " in text
    data = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    assert data["worker"]["ticking"] is True
    assert abs(data["worker"]["last_tick"] - clock.now) < 1e-6

    stale = collect(store, now=clock.now + 330).worker  # the key lives, but says 5 min ago
    assert stale is not None and not stale.ticking
    assert stale.describe() == "NOT TICKING (last tick 5m ago)"
    store.client.delete(store.keys.heartbeat)  # what its expiry does
    gone = render(collect(store, now=clock.now + 30))  # the last tick was at clock.now
    assert "worker: NOT TICKING (last tick 29s ago)" in gone, gone


def test_a_large_share_writes_its_statuses_a_part_per_tick(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From STATUS_SPREAD_FROM metrics on, no tick writes every status: each tick writes
    every STATUS_SPREAD_S-th metric's in turn, so within that many ticks each metric's is
    written once."""
    monkeypatch.setattr(worker_module, "STATUS_SPREAD_FROM", 10)
    spread = worker_module.STATUS_SPREAD_S
    names = [f"shop.m{i:02d}" for i in range(4 * spread)]
    start = int(clock.now)
    rng = np.random.default_rng(3)
    store.write_counts(
        {start - k: {m: int(rng.poisson(RATE)) for m in names} for k in range(1, 40 * 60 + 1)}
    )
    rules = parse_rules('[[rule]]\nmetric = "shop.*"\n', "<status rules>", env={})
    worker = Worker(store, rules, notifiers={}, clock=clock, warmup_minutes=30)
    worker.start()
    written: list[set[str]] = []
    for _ in range(spread):
        states = zip(names, store.get_states(names), strict=True)
        before = {m: st.get("status_at") for m, st in states}
        store.write_counts({int(clock.now): dict.fromkeys(names, RATE)})
        clock.advance(1.0)
        worker.tick()
        after = store.get_states(names)
        changed = zip(names, after, strict=True)
        written.append({m for m, st in changed if st.get("status_at") != before[m]})
    assert [len(w) for w in written] == [4] * spread
    assert set().union(*written) == set(names)
