"""Silences: added, listed and removed from the command line; honoured by the worker (an
incident that starts inside one is recorded, not delivered, and resolves quietly); ended
ones no longer apply; bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner, Result
from conftest import FakeClock
from httpstub import Recorder
from test_worker import METRIC, RATE, Shop, deliveries

from cliffwatch.alerting.cli import main
from cliffwatch.alerting.silences import Silence, Silences, parse_duration
from cliffwatch.errors import ConfigError
from cliffwatch.metrics.store import Store


@pytest.fixture(autouse=True)
def _no_cliffwatch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the caller's CLIFFWATCH_* settings."""
    for name in list(os.environ):
        if name.startswith("CLIFFWATCH_"):
            monkeypatch.delenv(name)


def cli(redis_url: str, prefix: str, *args: str, user: str = "alice") -> Result:
    """Invoke the command line in-process against the test Redis and prefix."""
    env = {"CLIFFWATCH_REDIS_URL": redis_url, "CLIFFWATCH_PREFIX": prefix, "USER": user}
    return CliRunner().invoke(main, list(args), env=env)


def assert_one_error_line(result: Result, contains: str) -> None:
    """Exit 1, nothing on stdout, one ``Error: ...`` line on stderr mentioning ``contains``."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert contains in lines[0], lines[0]


# -- the command line -----------------------------------------------------------------


def test_add_list_remove_from_the_command_line(redis_url: str, prefix: str) -> None:
    """`silence add` stores a silence (glob, end, reason, $USER), `silence list` shows it
    in text and JSON, `silence remove ID` ends it and the list is empty again."""
    added = cli(redis_url, prefix, "silence", "add", "payments.*", "--for", "2h",
                "--reason", "deploy 42", user="alice")
    assert added.exit_code == 0, added.output
    silence_id = added.stdout.split()[0]
    assert "payments.* silenced until " in added.stdout

    listed = cli(redis_url, prefix, "silence", "list", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)["silences"]
    assert (row["id"], row["pattern"], row["reason"], row["created_by"]) == (
        silence_id, "payments.*", "deploy 42", "alice")
    assert row["ends_at"] - row["starts_at"] == 7200
    assert 7100 < row["remaining_s"] <= 7200 and row["ends_at_iso"].endswith("Z")

    text = cli(redis_url, prefix, "silence", "list")
    assert text.exit_code == 0
    header, line = text.stdout.splitlines()
    assert header.split()[:4] == ["id", "metric", "until", "(UTC)"]
    assert line.split()[:2] == [silence_id, "payments.*"]
    assert row["ends_at_iso"] in line and "alice" in line and line.endswith("deploy 42")

    removed = cli(redis_url, prefix, "silence", "remove", silence_id)
    assert removed.exit_code == 0 and silence_id in removed.stdout
    assert cli(redis_url, prefix, "silence", "list").stdout == "no active silences\n"
    again = cli(redis_url, prefix, "silence", "remove", silence_id)
    assert_one_error_line(again, f"no silence with id '{silence_id}'")


BAD_ADDS = {
    "unitless-duration": (["orders.created", "--for", "2"], "invalid duration '2'"),
    "unknown-unit": (["orders.created", "--for", "2x"], "invalid duration '2x'"),
    "zero-duration": (["orders.created", "--for", "0m"], "longer than zero"),
    "negative-duration": (["orders.created", "--for", "-1h"], "invalid duration '-1h'"),
    "too-long": (["orders.created", "--for", "31d"], "at most 30d"),
    "upper-case-name": (["Orders.created", "--for", "1h"], "invalid metric name"),
    "space-in-name": (["orders created", "--for", "1h"], "invalid metric name"),
    "unclosed-set": (["payments.[ab", "--for", "1h"], "invalid metric glob"),
    "empty-reason": (["orders.created", "--for", "1h", "--reason", " "], "--reason"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDS))
def test_bad_silence_input_is_one_line(redis_url: str, prefix: str, store: Store,
                                       case: str) -> None:
    """A bad duration, metric pattern or reason exits 1 with one line naming the fault,
    and stores nothing."""
    args, contains = BAD_ADDS[case]
    if "--reason" not in args:
        args = [*args, "--reason", "maintenance"]
    assert_one_error_line(cli(redis_url, prefix, "silence", "add", *args), contains)
    assert store.silences() == {}


def test_remove_of_an_unknown_id_is_one_line(redis_url: str, prefix: str) -> None:
    """`silence remove` of an id that does not exist exits 1 with one line naming it."""
    assert_one_error_line(cli(redis_url, prefix, "silence", "remove", "0123abcd"),
                          "no silence with id '0123abcd'")
    assert_one_error_line(cli(redis_url, prefix, "silence", "remove", "nonsense!"),
                          "no silence with id 'nonsense!'")


def test_silence_commands_with_unreachable_redis_are_one_line() -> None:
    """Against a Redis nobody answers, `silence add` exits 1 with one line that names
    the server but not its password."""
    result = CliRunner().invoke(main, ["silence", "add", "orders.created", "--for", "1h",
                                       "--reason", "x", "--redis-url",
                                       "redis://:hunter2pw@127.0.0.1:1/0"])
    assert_one_error_line(result, "redis://:***@127.0.0.1:1/0")
    assert "hunter2pw" not in result.output


# -- the stored silences --------------------------------------------------------------


def test_durations() -> None:
    """Durations are a number and a unit, possibly several: 30m, 2h, 1d, 1h30m."""
    assert [parse_duration(t) for t in ("45s", "30m", "2h", "1d", "1h30m", " 2H ")] == [
        45, 1800, 7200, 86400, 5400, 7200]
    for bad in ("", "h", "1.5h", "1 h", "2w"):
        with pytest.raises(ConfigError, match="invalid duration"):
            parse_duration(bad)


def test_an_ended_silence_no_longer_applies_and_is_pruned(store: Store,
                                                          clock: FakeClock) -> None:
    """A silence covers matching metrics until it ends; once ended it covers nothing,
    is not listed, and the next read deletes it from Redis."""
    silences = Silences(store, clock=clock)
    s = silences.add("payments.*", 60, "deploy", "bob")
    assert silences.covering("payments.captured", clock.now) == s
    assert silences.covering("orders.created", clock.now) is None
    clock.advance(59)
    assert [x.id for x in silences.current()] == [s.id]
    clock.advance(1)
    assert list(store.silences()) == [s.id]  # still stored...
    assert silences.covering("payments.captured", clock.now) is None
    assert store.silences() == {}  # ...until read
    assert silences.current() == []


def test_an_unreadable_silence_is_skipped(store: Store, clock: FakeClock) -> None:
    """A hash entry that is not a silence is ignored; the good ones still apply."""
    store.client.hset(store.keys.silences, "junk", "{not json")
    good = Silences(store, clock=clock).add("orders.created", 600, "x", "y")
    assert Silences(store, clock=clock).current() == [good]
    assert Silence.from_json(good.id, store.silences()[good.id]) == good


# -- the worker -----------------------------------------------------------------------


def test_an_incident_inside_a_silence_is_recorded_not_paged(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """An outage that starts inside a silence opens an incident in Redis (silenced=1)
    but sends nothing; when the silence ends during the incident nothing is paged
    retroactively and the incident resolves quietly. A later outage, with the silence
    over, pages as usual."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    shop.run(worker, 120, RATE)
    silence = Silences(store, clock=clock).add("orders.*", 180, "migration", "carol")

    shop.run(worker, 120, 0)
    [(state, at)] = shop.states()
    assert state == "firing"
    st = store.get_state(METRIC)
    assert (st["state"], st["silenced"], st["silence_id"], st["pending"]) == (
        "firing", "1", silence.id, "")
    assert st["incident_id"] == f"{METRIC}@{at}"
    shop.run(worker, 120, 0)  # the silence ends while the metric is still down
    assert clock.now > silence.ends_at
    assert stub.requests == []

    shop.run(worker, 300, RATE)
    assert [s for s, _ in shop.states()] == ["firing", "resolved"]
    assert store.get_state(METRIC)["state"] == "ok"
    assert stub.requests == []

    shop.run(worker, 60, 0)
    shop.run(worker, 300, RATE)
    assert [s for s, _ in shop.states()] == ["firing", "resolved"] * 2
    assert deliveries(stub) == ["pagerduty trigger", "slack post", "pagerduty resolve",
                                "slack update", "slack reply"]
    assert store.get_state(METRIC)["silenced"] == ""


def test_a_silence_of_other_metrics_does_not_stop_a_page(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """With a silence on `payments.*` (and an ended one on the metric itself), an outage
    of orders.created pages Slack and PagerDuty as usual."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    silences = Silences(store, clock=clock)
    silences.add("payments.*", 3600, "deploy", "dave")
    silences.add(METRIC, 60, "short", "dave")
    shop.run(worker, 120, RATE)
    shop.run(worker, 60, 0)
    assert [s for s, _ in shop.states()] == ["firing"]
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    assert store.get_state(METRIC)["silenced"] == ""
