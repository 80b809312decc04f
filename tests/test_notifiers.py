"""Slack and PagerDuty notifiers against a local HTTP stand-in (tests/httpstub.py)."""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from dataclasses import replace
from typing import Any

import pytest
from httpstub import SLACK_WEBHOOK_PATH, Recorder, Request, slack_channel_id

from cliffwatch.alerting.alert import Alert, no_data_incident
from cliffwatch.alerting.notifiers import (
    PAGERDUTY_DEDUP_KEY,
    SLACK_CHANNEL,
    SLACK_TS,
    PagerDutyNotifier,
    SlackNotifier,
    escape_mrkdwn,
)
from cliffwatch.errors import ConfigError, DeliveryError

TOKEN = "xoxb-1111-2222-SECRETtoken"
ROUTING_KEY = "R0UTINGsecretKEY0123456789abcdef"
STARTED = 1_714_564_800  # 2024-05-01T12:00:00Z
EVIL = "orders<!channel>&<https://evil.example|click>"


def alert(state: str = "firing", metric: str = "orders.created", **changes: Any) -> Alert:
    firing = state == "firing"
    fields: dict[str, Any] = {
        "metric": metric,
        "state": state,
        "at": STARTED if firing else STARTED + 12 * 60,
        "severity": "page",
        "score": 7.25,
        "rate": 0.4 if firing else 18.7,
        "baseline": 19.8,
        "incident_id": f"{metric}@{STARTED}",
        "started_at": STARTED,
        "threshold": 5.0,
    }
    fields.update(changes)
    return Alert(**fields)


def slack(stub: Recorder, **options: Any) -> SlackNotifier:
    return SlackNotifier(token=TOKEN, channel="#alerts", base_url=stub.slack_api_url, **options)


def pagerduty(stub: Recorder, **options: Any) -> PagerDutyNotifier:
    return PagerDutyNotifier(routing_key=ROUTING_KEY, url=stub.pagerduty_url, **options)


def texts(request: Request) -> str:
    """Every string the request body carries, as one JSON text."""
    return json.dumps(request.data, ensure_ascii=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (TOKEN, ROUTING_KEY, SLACK_WEBHOOK_PATH):
            assert secret not in text


# -- wording -----------------------------------------------------------------------------


def test_escape_mrkdwn_neutralises_specials() -> None:
    """&, < and > become entities, & first, so nothing can form a mention or a link."""
    assert escape_mrkdwn("a & <!channel> <@U1> b>") == "a &amp; &lt;!channel&gt; &lt;@U1&gt; b&gt;"
    assert escape_mrkdwn("&lt;") == "&amp;lt;"


def test_alert_to_json_and_validation() -> None:
    """to_json carries every field; an unknown state is a ValueError naming it."""
    assert alert().to_json() == {
        "metric": "orders.created",
        "state": "firing",
        "at": STARTED,
        "severity": "page",
        "score": 7.25,
        "rate": 0.4,
        "baseline": 19.8,
        "incident_id": f"orders.created@{STARTED}",
        "started_at": STARTED,
        "threshold": 5.0,
        "recent": [],
        "links": [],
    }
    with pytest.raises(ValueError, match="state"):
        alert(state="open")
    drawn = alert(recent=[50.0, math.nan, 0.0], links=[("https://wiki.example.com/r", "Runbook")])
    assert drawn.to_json()["recent"] == [50.0, None, 0.0]  # strict JSON: no NaN
    back = Alert(**json.loads(json.dumps(drawn.to_json(), allow_nan=False)))
    assert back.links == (("https://wiki.example.com/r", "Runbook"),)
    assert back.recent[0] == 50.0 and math.isnan(back.recent[1]) and back.recent[2] == 0.0


# -- Slack, bot token --------------------------------------------------------------------


def test_slack_firing_posts_one_escaped_message(stub: Recorder) -> None:
    """Firing posts one chat.postMessage with blocks, fallback text and the metric escaped."""
    memo = slack(stub).send(alert(metric=EVIL), {})

    [post] = stub.requests
    assert post.path == "/api/chat.postMessage"
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    body = post.json
    assert body["channel"] == "#alerts"
    assert memo == {SLACK_CHANNEL: slack_channel_id("#alerts"), SLACK_TS: memo[SLACK_TS]}
    everything = texts(post)
    assert "<" not in everything and ">" not in everything
    assert "&lt;!channel&gt;&amp;&lt;https://evil.example|click&gt;" in body["text"]
    assert "fell to 0.4/s from 19.8/s (−98%)" in body["text"]
    assert "2024-05-01T12:00:00Z" in body["text"]
    assert "7.2 (threshold 5.0)" in everything
    assert body["blocks"][0]["text"]["verbatim"] is True


def test_slack_resolve_updates_the_same_message_and_replies_in_thread(stub: Recorder) -> None:
    """Resolve edits the firing message (same channel id and ts) and broadcasts a thread reply."""
    notifier = slack(stub)
    memo = notifier.send(alert(), {})
    kept = notifier.send(alert("resolved"), memo)

    post, update, reply = stub.requests
    assert kept == memo
    assert update.path == "/api/chat.update"
    assert (update.json["channel"], update.json["ts"]) == (memo[SLACK_CHANNEL], memo[SLACK_TS])
    assert "back to 18.7/s (normal 19.8/s) after 12 min" in update.json["text"]
    assert "RESOLVED" in update.json["text"]
    assert reply.path == "/api/chat.postMessage"
    assert reply.json["thread_ts"] == memo[SLACK_TS]
    assert reply.json["channel"] == memo[SLACK_CHANNEL]
    assert reply.json["reply_broadcast"] is True


def test_slack_resolve_without_ts_posts_a_new_message(stub: Recorder) -> None:
    """With no ts in the memo, resolve posts a fresh message and returns its ts."""
    memo = slack(stub).send(alert("resolved"), {})

    [post] = stub.requests
    assert post.path == "/api/chat.postMessage"
    assert "thread_ts" not in post.json
    assert memo[SLACK_TS]


def test_slack_resolve_still_replies_when_the_message_is_gone(stub: Recorder) -> None:
    """A chat.update refused with message_not_found does not stop the thread reply."""
    memo = {SLACK_CHANNEL: slack_channel_id("#alerts"), SLACK_TS: "1.000001"}
    slack(stub).send(alert("resolved"), memo)

    assert [r.path for r in stub.requests] == ["/api/chat.update", "/api/chat.postMessage"]


def test_slack_429_is_retried_after_retry_after(stub: Recorder) -> None:
    """A 429 with Retry-After: 1 is retried by the SDK handler about a second later."""
    stub.fail_next(1, 429, headers={"Retry-After": "1"}, path="/api/chat.postMessage")
    memo = slack(stub).send(alert(), {})

    first, second = stub.requests
    assert second.received_at - first.received_at >= 0.95
    assert memo[SLACK_TS]


def test_slack_429_beyond_max_retry_after_is_not_waited_for(stub: Recorder) -> None:
    """A Retry-After longer than max_retry_after fails at once instead of stalling the worker."""
    stub.fail_next(1, 429, headers={"Retry-After": "120"})
    with pytest.raises(DeliveryError, match="429"):
        slack(stub, max_retry_after=5).send(alert(), {})
    assert len(stub.requests) == 1


def test_slack_transient_api_error_is_retried(stub: Recorder) -> None:
    """An ok:false internal_error answer is retried; a permanent error is not."""
    stub.fail_next(1, 200, body={"ok": False, "error": "internal_error"})
    assert slack(stub).send(alert(), {})[SLACK_TS]
    assert len(stub.requests) == 2


def test_slack_errors_are_delivery_errors_without_the_token(
    stub: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """500s past the retries and API refusals raise DeliveryError that never shows the token."""
    caplog.set_level(logging.DEBUG)
    stub.fail_next(2, 500, body={"ok": False, "error": f"boom {TOKEN}"})
    with pytest.raises(DeliveryError, match="HTTP 500") as failed:
        slack(stub, attempts=2).send(alert(), {})
    assert len(stub.requests) == 2

    stub.fail_next(1, 200, body={"ok": False, "error": "channel_not_found"})
    with pytest.raises(DeliveryError, match="channel_not_found") as refused:
        slack(stub).send(alert(), {})
    assert len(stub.requests) == 3

    for error in (failed.value, refused.value):
        assert error.__cause__ is None and error.__context__ is None
    assert_no_secrets(str(failed.value), str(refused.value), caplog.text)


def test_slack_unreachable_is_a_delivery_error_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection errors are retried, then raise DeliveryError; no token or webhook URL leaks."""
    caplog.set_level(logging.DEBUG)
    dead = f"http://127.0.0.1:{free_port()}"
    token_mode = SlackNotifier(token=TOKEN, channel="#a", base_url=f"{dead}/api/", attempts=2)
    hook_mode = SlackNotifier(webhook_url=dead + SLACK_WEBHOOK_PATH, attempts=2)
    for notifier in (token_mode, hook_mode):
        with pytest.raises(DeliveryError, match="could not be reached") as failed:
            notifier.send(alert(), {})
        assert_no_secrets(str(failed.value), repr(notifier))
    assert any("Failed to send a request" in r.getMessage() for r in caplog.records)
    assert_no_secrets(caplog.text)


# -- Slack, incoming webhook -------------------------------------------------------------


def test_slack_webhook_posts_each_transition(stub: Recorder) -> None:
    """With a webhook URL, firing and resolved are two escaped posts and the memo stays empty."""
    notifier = SlackNotifier(webhook_url=stub.slack_webhook_url)
    assert notifier.send(alert(metric=EVIL), {}) == {}
    assert notifier.send(alert("resolved", metric=EVIL), {}) == {}

    firing, resolved = stub.requests
    assert firing.path == resolved.path == SLACK_WEBHOOK_PATH
    assert "fell to 0.4/s" in firing.json["text"]
    assert "back to 18.7/s" in resolved.json["text"]
    for request in (firing, resolved):
        assert "<" not in texts(request) and "&lt;!channel&gt;" in request.json["text"]


def test_slack_webhook_refusal_is_a_delivery_error(stub: Recorder) -> None:
    """A webhook 404 raises DeliveryError naming the status, not the URL."""
    stub.fail_next(1, 404, body="no_service")
    with pytest.raises(DeliveryError, match="404") as failed:
        SlackNotifier(webhook_url=stub.slack_webhook_url).send(alert(), {})
    assert_no_secrets(str(failed.value))


# -- PagerDuty ---------------------------------------------------------------------------


def test_pagerduty_trigger_and_resolve_share_a_deterministic_dedup_key(stub: Recorder) -> None:
    """Trigger and resolve (even from a fresh notifier with no memo) use cliffwatch/<m>/<start>."""
    memo = pagerduty(stub).send(alert(), {})
    pagerduty(stub).send(alert("resolved"), {})

    key = f"cliffwatch/orders.created/{STARTED}"
    assert memo == {PAGERDUTY_DEDUP_KEY: key}
    trigger, resolve = (r.json for r in stub.requests_to("/v2/enqueue"))
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == key
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    payload = trigger["payload"]
    assert payload["summary"].startswith("orders.created fell to 0.4/s from 19.8/s (−98%)")
    assert payload["severity"] == "critical"
    assert payload["source"] == "cliffwatch"
    assert payload["component"] == "orders.created"
    assert payload["timestamp"] == "2024-05-01T12:00:00Z"
    details = payload["custom_details"]
    assert (details["rate"], details["baseline"], details["score"], details["threshold"]) == (
        0.4,
        19.8,
        7.25,
        5.0,
    )


def test_pagerduty_notify_severity_and_long_summary(stub: Recorder) -> None:
    """A notify alert is a warning, and a huge metric name still yields a summary <= 1024."""
    pagerduty(stub).send(alert(metric="m" * 2000, severity="notify"), {})

    [trigger] = stub.requests
    assert trigger.json["payload"]["severity"] == "warning"
    assert len(trigger.json["payload"]["summary"]) == 1024


def test_pagerduty_500_then_202_is_retried(stub: Recorder) -> None:
    """A 500 is retried after a short backoff and the event is then accepted."""
    stub.fail_next(1, 500)
    pagerduty(stub).send(alert(), {})

    first, second = stub.requests
    assert first.json == second.json
    assert second.received_at - first.received_at >= 0.45


def test_pagerduty_429_honours_retry_after(stub: Recorder) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than a second later."""
    stub.fail_next(1, 429, headers={"Retry-After": "1"})
    pagerduty(stub).send(alert(), {})

    first, second = stub.requests
    assert second.received_at - first.received_at >= 0.95


def test_pagerduty_400_is_not_retried(stub: Recorder) -> None:
    """A 400 raises DeliveryError at once, with PagerDuty's reason and without the routing key."""
    body = {"status": "invalid event", "errors": [f"routing key {ROUTING_KEY} is bad"]}
    stub.fail_next(1, 400, body=body)
    with pytest.raises(DeliveryError, match="HTTP 400: invalid event") as failed:
        pagerduty(stub).send(alert(), {})

    assert len(stub.requests) == 1
    assert_no_secrets(str(failed.value))


def test_pagerduty_gives_up_after_the_attempts(stub: Recorder) -> None:
    """Persistent 503s stop after `attempts` tries with a DeliveryError."""
    stub.fail_next(5, 503)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="HTTP 503.*gave up after 2 attempts"):
        pagerduty(stub, attempts=2).send(alert(), {})
    assert len(stub.requests) == 2
    assert time.monotonic() - started < 5


def test_pagerduty_retry_after_past_the_budget_fails_at_once(stub: Recorder) -> None:
    """A Retry-After beyond max_elapsed is not slept through: DeliveryError right away."""
    stub.fail_next(1, 429, headers={"Retry-After": "60"})
    with pytest.raises(DeliveryError, match="429"):
        pagerduty(stub, max_elapsed=10).send(alert(), {})
    assert len(stub.requests) == 1


def test_pagerduty_unreachable_is_a_delivery_error(caplog: pytest.LogCaptureFixture) -> None:
    """Connection errors are retried, then raise DeliveryError without the routing key."""
    caplog.set_level(logging.DEBUG)
    notifier = PagerDutyNotifier(
        routing_key=ROUTING_KEY, url=f"http://127.0.0.1:{free_port()}/v2/enqueue", attempts=2
    )
    with pytest.raises(DeliveryError, match="could not be reached.*2 attempts") as failed:
        notifier.send(alert(), {})
    assert "retrying" in caplog.text
    assert_no_secrets(str(failed.value), caplog.text)


# -- configuration -----------------------------------------------------------------------


def test_repr_hides_secrets(stub: Recorder) -> None:
    """repr() of every notifier shows where it sends, never the token, URL secret or key."""
    shown = [
        repr(slack(stub)),
        repr(SlackNotifier(webhook_url=stub.slack_webhook_url)),
        repr(pagerduty(stub)),
    ]
    assert "#alerts" in shown[0] and stub.pagerduty_url in shown[2]
    assert_no_secrets(*shown)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"token": TOKEN, "webhook_url": "https://hooks.slack.com/services/x"},
        {"token": TOKEN},
        {"webhook_url": "file:///etc/passwd"},
        {"token": TOKEN, "channel": "#a", "attempts": 0},
    ],
)
def test_slack_bad_options_are_config_errors(options: dict[str, Any]) -> None:
    """Neither/both modes, a token without channel, a non-http URL or 0 attempts: ConfigError."""
    with pytest.raises(ConfigError) as failed:
        SlackNotifier(**options)
    assert_no_secrets(str(failed.value))


def test_pagerduty_bad_options_are_config_errors() -> None:
    """An empty routing key or a non-http URL is a ConfigError."""
    with pytest.raises(ConfigError, match="routing_key"):
        PagerDutyNotifier(routing_key=" ")
    with pytest.raises(ConfigError, match="url"):
        PagerDutyNotifier(routing_key=ROUTING_KEY, url="ftp://example.com/")


def test_alert_replace_keeps_incident() -> None:
    """The resolved alert derived from the firing one keeps the incident fields (frozen record)."""
    firing = alert()
    resolved = replace(firing, state="resolved", at=STARTED + 60, rate=19.0)
    assert (resolved.incident_id, resolved.started_at) == (firing.incident_id, firing.started_at)
    with pytest.raises(AttributeError):
        firing.rate = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("state", ["firing", "resolved"])
def test_block_kit_message_is_valid_for_slack_sdk_models(state: str) -> None:
    """The Slack blocks parse into slack-sdk's Block Kit model classes, pass their
    validation and come back unchanged."""
    from slack_sdk.models.blocks import Block

    from cliffwatch.alerting.notifiers import _slack_message

    recent = [30.0] * 25 + [math.nan] + [0.0] * 4
    alert = Alert("payments.captured", state, 1_700_000_642, "page", -3.6, 0.0 if state ==
                  "firing" else 29.1, 30.2, "payments.captured@1700000042", 1_700_000_042, -3.0,
                  recent, [("https://wiki.example.com/pay?a=1&b=2", "Runbook")])
    text, blocks = _slack_message(alert)
    assert text
    assert f"`{'█' * 25}·▁▁▁▁`" in blocks[2]["text"]["text"]
    assert "<https://wiki.example.com/pay?a=1&amp;b=2|Runbook>" in blocks[-1]["elements"][0]["text"]
    for raw in blocks:
        block = Block.parse(raw)
        assert block is not None
        block.validate_json()
        assert block.to_dict() == raw


def test_sparkline_draws_each_minute_against_the_largest() -> None:
    """Zero is the lowest bar, the largest rate the highest, NaN a gap; nothing known:
    no picture at all."""
    from cliffwatch.alerting.notifiers import sparkline

    assert sparkline([0.0, 25.0, 50.0, math.nan, 10.0]) == "▁▅█·▂"
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([math.nan, math.nan]) == sparkline([]) == ""


def test_slack_message_shows_the_last_minutes_and_the_links(stub: Recorder) -> None:
    """The firing message and the resolve update carry the per-minute picture of the
    metric and the rule's links; an alert without recent rates has no picture block."""
    notifier = slack(stub)
    recent = [20.0] * 27 + [0.5, 0.4, 0.4]
    links = [("https://wiki.example.com/orders", "Runbook"),
             ("https://grafana.example.com/d/o", "Dashboard")]
    memo = notifier.send(alert(recent=recent, links=links), {})
    notifier.send(alert("resolved", recent=recent[3:] + [19.0, 19.5, 20.0], links=links), memo)
    post = stub.requests_to("/api/chat.postMessage")[0].json
    update = stub.requests_to("/api/chat.update")[0].json
    for body in (post, json.loads(update["blocks"]) if isinstance(update["blocks"], str)
                 else update):
        blocks = body["blocks"] if isinstance(body, dict) else body
        said = json.dumps(blocks, ensure_ascii=False)
        assert "*Last 30 min*, events/s per minute" in said
        assert "<https://wiki.example.com/orders|Runbook>" in said
        assert "<https://grafana.example.com/d/o|Dashboard>" in said
    assert "`" + "█" * 27 + "▁▁▁`" in json.dumps(post["blocks"], ensure_ascii=False)
    stub.clear()
    notifier.send(alert(), {})
    plain = stub.requests_to("/api/chat.postMessage")[0].json["blocks"]
    assert "Last" not in json.dumps(plain)


def test_pagerduty_trigger_carries_the_links(stub: Recorder) -> None:
    """The Events v2 trigger sends the rule's runbook and dashboard as `links`
    ({href, text}), which the stand-in accepts; the resolve needs none."""
    links = [("https://wiki.example.com/orders", "Runbook"),
             ("https://grafana.example.com/d/o", "Dashboard")]
    notifier = pagerduty(stub)
    memo = notifier.send(alert(links=links), {})
    notifier.send(alert("resolved", links=links), memo)
    trigger, resolve = (r.json for r in stub.requests_to("/v2/enqueue"))
    assert trigger["links"] == [
        {"href": "https://wiki.example.com/orders", "text": "Runbook"},
        {"href": "https://grafana.example.com/d/o", "text": "Dashboard"},
    ]
    assert "links" not in resolve
    stub.clear()
    notifier.send(alert(), {})
    assert "links" not in stub.requests_to("/v2/enqueue")[0].json


def test_a_no_data_notice_names_the_metric_and_says_it_is_no_drop(stub: Recorder) -> None:
    """A metric's "no data" alert reads as the apps having stopped reporting, not as a
    drop, under the metric's own name (escaped); its resolve says the data is back."""
    name = no_data_incident(EVIL)
    fired = alert(metric=name, severity="notify", score=-12.0, threshold=-10.0, rate=0.0,
                  incident_id=f"{name}@{STARTED}")
    notifier = slack(stub)
    memo = notifier.send(fired, {})
    notifier.send(replace(fired, state="resolved", at=STARTED + 180, rate=18.7), memo)

    post, update, _reply = stub.requests
    text = post.json["text"]
    assert text.startswith(":warning: NOTIFY: `")
    assert f"`{escape_mrkdwn(EVIL)}`: no data for 12 s — the app processes that send it " \
           "stopped reporting (other apps still flush); not a drop of the business, " \
           "not paged" in text
    assert "cliffwatch.no-data" not in text and "fell to" not in text
    assert "<" not in texts(post) and ">" not in texts(post)
    assert "*No data for*\\n12 s (after 10 s)" in texts(post)
    resolved = update.json["text"]
    assert "RESOLVED" in resolved
    assert "has data again after 3 min: 18.7/s (normal 19.8/s)" in resolved


@pytest.mark.parametrize("state", ["firing", "resolved"])
def test_no_data_block_kit_message_is_valid_for_slack_sdk_models(state: str) -> None:
    """The "no data" blocks pass slack-sdk's Block Kit validation too."""
    from slack_sdk.models.blocks import Block

    from cliffwatch.alerting.notifiers import _slack_message

    name = no_data_incident("payments.captured")
    alert = Alert(name, state, 1_700_000_642, "notify", -10.0, 0.0 if state == "firing"
                  else 29.1, 30.2, f"{name}@1700000042", 1_700_000_042, -10.0)
    for raw in _slack_message(alert)[1]:
        block = Block.parse(raw)
        assert block is not None
        block.validate_json()
