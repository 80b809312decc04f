"""Alertmanager interoperability: alerts pushed to Alertmanager's API v2 and to a generic
webhook in Alertmanager's webhook JSON, their rules-file tables, routing and re-sending
while an incident fires, against a local HTTP stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from conftest import FakeClock
from httpstub import ALERTMANAGER_PATH, PAGERDUTY_PATH, WEBHOOK_PATH, Recorder
from test_worker import METRIC, RATE, ROUTING_KEY, Shop

from cliffwatch.alerting.alert import Alert, no_data_incident
from cliffwatch.alerting.alertmanager import (
    ALERTMANAGER,
    WEBHOOK,
    AlertmanagerNotifier,
    WebhookNotifier,
    fingerprint,
    hold_for,
)
from cliffwatch.alerting.incidents import Route
from cliffwatch.alerting.outbox import is_permanent
from cliffwatch.alerting.worker import Worker, build_notifiers
from cliffwatch.errors import ConfigError, DeliveryError, RulesError
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import PAGERDUTY_ROUTING_KEY_ENV, RuleSet, parse_rules

STARTED = 1_714_564_800  # 2024-05-01T12:00:00Z
NOW = STARTED + 30


@pytest.fixture
def stub() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[Store]:
    """A store over the test Redis, under this test's prefix."""
    s = Store.from_url(redis_url, prefix=prefix)
    yield s
    s.close()


def alert(state: str = "firing", severity: str = "page") -> Alert:
    at = STARTED if state == "firing" else STARTED + 720
    rate = 0.4 if state == "firing" else 18.7
    return Alert(
        "orders.created", state, at, severity, -7.25, rate, 19.8,  # type: ignore[arg-type]
        f"orders.created@{STARTED}", STARTED, -5.0,
    )


def test_alertmanager_firing_then_resolved(stub: Recorder) -> None:
    """Firing posts one alert with labels, annotations, startsAt and endsAt `hold_s`
    ahead; resolved posts the same labels with endsAt = the resolve time."""
    notifier = AlertmanagerNotifier(
        url=stub.base_url, labels={"team": "shop"}, hold_s=3600, clock=lambda: NOW
    )
    assert notifier.send(alert(), {}) == {}
    assert notifier.send(alert("resolved"), {}) == {}

    firing, resolved = (r.json for r in stub.requests_to(ALERTMANAGER_PATH))
    assert len(stub.requests) == 2
    [fired], [ended] = firing, resolved
    labels = {"alertname": "CliffwatchDrop", "metric": "orders.created",
              "severity": "page", "team": "shop"}
    assert fired["labels"] == ended["labels"] == labels
    assert fired["startsAt"] == ended["startsAt"] == "2024-05-01T12:00:00Z"
    assert fired["endsAt"] == "2024-05-01T13:00:30Z"  # now + 1 h
    assert ended["endsAt"] == "2024-05-01T12:12:00Z"
    assert fired["annotations"]["summary"] == "orders.created fell to 0.4/s from 19.8/s (−98%)"
    assert fired["annotations"]["description"] == (
        "rate 0.4/s, normal 19.8/s, score -7.2 (threshold -5.0), since 2024-05-01T12:00:00Z"
    )
    assert "back to 18.7/s (normal 19.8/s) after 12 min" in ended["annotations"]["summary"]
    assert "generatorURL" not in fired


def test_a_no_data_alert_is_its_own_alertname_under_the_metric(stub: Recorder) -> None:
    """A metric's "no data" alert goes to Alertmanager as ``CliffwatchNoData`` with the
    metric's own name, so it never folds into (or resolves) a drop of that metric."""
    notifier = AlertmanagerNotifier(url=stub.base_url, hold_s=3600, clock=lambda: NOW)
    name = no_data_incident("orders.created")
    nodata = Alert(name, "firing", STARTED, "notify", -11.0, 0.0, 19.8, f"{name}@{STARTED}",
                   STARTED, -10.0)
    notifier.send(nodata, {})
    notifier.send(alert(), {})
    [[fired], [drop]] = (r.json for r in stub.requests_to(ALERTMANAGER_PATH))
    assert fired["labels"] == {"alertname": "CliffwatchNoData", "metric": "orders.created",
                               "severity": "notify"}
    assert fired["annotations"]["summary"].startswith("orders.created: no data for 11 s — ")
    assert drop["labels"]["alertname"] == "CliffwatchDrop"
    assert fingerprint(fired["labels"]) != fingerprint(drop["labels"])


def test_alertmanager_remind_moves_ends_at_ahead(stub: Recorder) -> None:
    """A reminder re-posts the firing alert with endsAt counted from the reminder."""
    notifier = AlertmanagerNotifier(url=stub.base_url + "/", hold_s=600,
                                    generator_url="https://grafana.example/d/shop")
    later = Alert("orders.created", "firing", STARTED + 1800, "notify", -6.0, 0.5, 19.8,
                  f"orders.created@{STARTED}", STARTED, -5.0)
    notifier.remind(later, {})

    [[posted]] = [r.json for r in stub.requests_to(ALERTMANAGER_PATH)]
    assert posted["startsAt"] == "2024-05-01T12:00:00Z"
    assert posted["labels"]["severity"] == "notify"
    assert posted["generatorURL"] == "https://grafana.example/d/shop"
    # clock is real time (after 2024): endsAt is 10 min after now, well past the reminder
    assert posted["endsAt"] > "2024-05-01T12:40:00Z"


def test_webhook_firing_then_resolved_has_alertmanagers_webhook_shape(stub: Recorder) -> None:
    """Each transition is one POST of Alertmanager's version-4 webhook JSON, with the
    same fingerprint on firing and resolved."""
    notifier = WebhookNotifier(url=stub.webhook_url, labels={"team": "shop"})
    notifier.send(alert(severity="notify"), {})
    notifier.send(alert("resolved", severity="notify"), {})

    firing, resolved = (r.json for r in stub.requests_to(WEBHOOK_PATH))
    labels = {"alertname": "CliffwatchDrop", "metric": "orders.created",
              "severity": "notify", "team": "shop"}
    for body, state in ((firing, "firing"), (resolved, "resolved")):
        assert body["version"] == "4"
        assert body["status"] == state
        assert body["receiver"] == "cliffwatch"
        assert body["groupLabels"] == {"alertname": "CliffwatchDrop", "metric": "orders.created"}
        assert body["commonLabels"] == labels
        assert body["commonAnnotations"] == body["alerts"][0]["annotations"]
        assert body["externalURL"] == ""
        [one] = body["alerts"]
        assert set(one) >= {"status", "labels", "annotations", "startsAt", "endsAt",
                            "fingerprint"}
        assert one["status"] == state and one["labels"] == labels
        assert one["startsAt"] == "2024-05-01T12:00:00Z"
        assert one["fingerprint"] == fingerprint(labels)
    assert firing["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["alerts"][0]["endsAt"] == "2024-05-01T12:12:00Z"
    assert "fell to 0.4/s" in firing["commonAnnotations"]["summary"]


@pytest.mark.parametrize("sink", [ALERTMANAGER, WEBHOOK])
def test_a_500_is_retried(stub: Recorder, sink: str) -> None:
    """A 500 is retried after a short backoff with the same body, then accepted."""
    if sink == ALERTMANAGER:
        notifier: AlertmanagerNotifier | WebhookNotifier = AlertmanagerNotifier(url=stub.base_url)
    else:
        notifier = WebhookNotifier(url=stub.webhook_url)
    stub.fail_next(1, 500)
    notifier.send(alert(), {})

    first, second = stub.requests
    assert first.body == second.body
    assert second.received_at - first.received_at >= 0.45


def test_a_400_is_a_permanent_delivery_error_and_persistent_503s_give_up(
    stub: Recorder,
) -> None:
    """A 400 fails at once (the outbox drops it); 503s past the attempts raise."""
    notifier = AlertmanagerNotifier(url=stub.base_url, attempts=2)
    stub.fail_next(1, 400, body="bad alert")
    with pytest.raises(DeliveryError, match="HTTP 400") as refused:
        notifier.send(alert(), {})
    assert is_permanent(refused.value)
    assert len(stub.requests) == 1

    stub.fail_next(5, 503)
    with pytest.raises(DeliveryError, match="HTTP 503.*gave up after 2 attempts") as failed:
        notifier.send(alert(), {})
    assert not is_permanent(failed.value)
    assert len(stub.requests) == 3


def test_webhook_url_path_is_never_shown() -> None:
    """repr() and delivery errors name the webhook's host, never its (secret) path."""
    notifier = WebhookNotifier(url="http://127.0.0.1:1/hooks/t0ps3cret", attempts=1)
    with pytest.raises(DeliveryError, match="could not be reached") as failed:
        notifier.send(alert(), {})
    for shown in (repr(notifier), str(failed.value)):
        assert "t0ps3cret" not in shown and "127.0.0.1:1" in shown


def test_bad_options_are_config_errors() -> None:
    """A non-http URL, a reserved or malformed label, or a short hold: ConfigError."""
    with pytest.raises(ConfigError, match="url"):
        AlertmanagerNotifier(url="am:9093")
    with pytest.raises(ConfigError, match="'severity' is set by cliffwatch"):
        AlertmanagerNotifier(url="http://am:9093", labels={"severity": "low"})
    with pytest.raises(ConfigError, match="label name"):
        WebhookNotifier(url="https://x.example/h", labels={"team-name": "shop"})
    with pytest.raises(ConfigError, match="hold_s"):
        AlertmanagerNotifier(url="http://am:9093", hold_s=5)


# -- rules file and routing -----------------------------------------------------------


RULE = '[[rule]]\nmetric = "orders.created"\n'


def test_rules_tables_build_notifiers_that_get_every_severity() -> None:
    """[alertmanager] and [webhook] become notifiers that both severities route to; the
    Alertmanager's endsAt horizon covers two reminder intervals."""
    text = (
        f'[defaults]\nreminder = "10m"\n{RULE}\n'
        '[alertmanager]\nurl = "http://am:9093"\nlabels = {team = "shop", env = "prod"}\n\n'
        '[webhook]\nurl = "https://hooks.example.com/am"\n'
    )
    rules = parse_rules(text, "r.toml", env={})
    assert rules.alertmanager is not None and rules.webhook is not None
    assert rules.alertmanager.url == "http://am:9093"
    assert dict(rules.alertmanager.labels) == {"team": "shop", "env": "prod"}
    assert not any("only logged" in w for w in rules.warnings)
    notifiers = build_notifiers(rules)
    assert set(notifiers) == {ALERTMANAGER, WEBHOOK}
    am = notifiers[ALERTMANAGER]
    assert isinstance(am, AlertmanagerNotifier) and am.hold_s == 1200 == hold_for(600)
    route = Route(notifiers)
    for severity in ("page", "notify"):
        assert [name for name, _ in route.targets(severity)] == [ALERTMANAGER, WEBHOOK]
    assert hold_for(0) == 86_400 and hold_for(60) == 300


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('[alertmanager]\nurl = "am:9093"', r"^r\.toml:5: 'url' must be an http\(s\) URL"),
        ('[webhook]\nurl = "ftp://x/y"', r"^r\.toml:5: 'url' must be an http\(s\) URL"),
        ("[webhook]\n", r"^r\.toml:4: \[webhook\] needs a 'url'"),
        ('[alertmanager]\nurl = "http://am"\nlabels = {metric = "x"}',
         r"^r\.toml:6: \[alertmanager\] label 'metric' is set by cliffwatch"),
        ('[alertmanager]\nurl = "http://am"\nlabels = "team=shop"',
         r"^r\.toml:6: 'labels' must be a table"),
        ('[alertmanager]\nurl = "http://am"\nlabels = {team = 1}',
         r"^r\.toml:6: \[alertmanager\] label 'team' must have a string value"),
        ('[webhook]\nurl = "http://x"\nreceiver = "y"', r"^r\.toml:6: unknown key 'receiver'"),
        ("[alertmanger]\n", r"^r\.toml:4: unknown table \[alertmanger\] \(did you mean"),
    ],
)
def test_a_bad_table_is_a_one_line_error_naming_file_and_line(table: str, expected: str) -> None:
    """A bad URL, missing url, bad labels or unknown key: RulesError `FILE:LINE: ...`."""
    with pytest.raises(RulesError, match=expected) as failed:
        parse_rules(f"{RULE}\n{table}\n", "r.toml", env={})
    assert "\n" not in str(failed.value)


# -- end to end ---------------------------------------------------------------------------


def sink_rules(stub: Recorder) -> RuleSet:
    """One paging rule reminding every 2 min; PagerDuty, Alertmanager and webhook at ``stub``."""
    text = f"""
[defaults]
reminder = "2m"

[[rule]]
metric = "{METRIC}"

[pagerduty]
url = "{stub.pagerduty_url}"

[alertmanager]
url = "{stub.base_url}"
labels = {{team = "shop"}}

[webhook]
url = "{stub.webhook_url}"
"""
    return parse_rules(text, "<sink rules>", env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


def test_worker_pushes_a_drop_to_alertmanager_and_resends_it_while_firing(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """A drop fires to PagerDuty, Alertmanager and the webhook; while it fires the
    reminders re-send it to Alertmanager only; the resolve reaches all three."""
    shop = Shop(store, clock)
    shop.prefill()
    rules = sink_rules(stub)
    notifiers = build_notifiers(rules)
    am = notifiers[ALERTMANAGER]
    assert isinstance(am, AlertmanagerNotifier)
    am.clock = clock  # endsAt counted on the worker's clock
    worker = Worker(store, rules, notifiers=notifiers, clock=clock, warmup_minutes=30,
                    on_alert=shop.alerts.append)
    worker.start()
    shop.run(worker, 60, RATE)
    shop.run(worker, 250, 0)  # fires, then reminders at +2 and +4 min
    shop.run(worker, 300, RATE)
    assert [s for s, _ in shop.states()] == ["firing", "resolved"]
    (_, fired_at), (_, resolved_at) = shop.states()

    assert [r.json["event_action"] for r in stub.requests_to(PAGERDUTY_PATH)] == [
        "trigger", "resolve"]
    hooks = [r.json for r in stub.requests_to(WEBHOOK_PATH)]
    assert [h["status"] for h in hooks] == ["firing", "resolved"]
    pushed = [r.json[0] for r in stub.requests_to(ALERTMANAGER_PATH)]
    assert len(pushed) == 4  # firing, two reminders, resolved
    assert all(p["labels"]["team"] == "shop" and p["labels"]["metric"] == METRIC
               for p in pushed)
    assert len({p["startsAt"] for p in pushed}) == 1
    ends = [datetime.fromisoformat(p["endsAt"]).timestamp() for p in pushed]
    # hold_for(120) is 5 min: endsAt is 5 min past the clock at firing, then at each
    # reminder (the clock is a few seconds past the judged second)
    for end, sent_at in zip(ends[:3], (fired_at, fired_at + 120, fired_at + 240), strict=True):
        assert sent_at + 300 <= end <= sent_at + 305
    assert int(ends[3]) == resolved_at
    assert hooks[1]["alerts"][0]["endsAt"] == pushed[3]["endsAt"]
    worker.close()
