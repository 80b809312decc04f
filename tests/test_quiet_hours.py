"""Quiet hours: the window in local time (midnight, daylight saving), notify alerts held
in Redis and sent as one Slack digest when it ends, pages never held — the worker on a
fake clock, a real Redis and the Slack/PagerDuty stand-ins."""

from __future__ import annotations

import json
from datetime import datetime
from datetime import time as Time
from typing import Any
from zoneinfo import ZoneInfo

from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder
from test_routes import Traffic
from test_worker import RATE, ROUTING_KEY, TOKEN

from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.blind import BLIND_METRIC, BLIND_SEVERITY
from cliffwatch.alerting.incidents import Incidents, Route
from cliffwatch.alerting.notifiers import SlackNotifier
from cliffwatch.alerting.quiet import QuietHold, digest_message, summarize
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import (
    PAGERDUTY_ROUTING_KEY_ENV,
    SLACK_TOKEN_ENV,
    QuietHours,
    RuleSet,
    parse_rules,
)

POST = "/api/chat.postMessage"
SIGNUPS, NEWSLETTER, ORDERS = "signups.completed", "newsletter.opened", "orders.created"
START = 1_800_000_000  # 2027-01-15 09:00 in Europe/Berlin (08:00 UTC)
BERLIN = "Europe/Berlin"


def epoch(local: str, zone: str = BERLIN) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp()


# -- the window ---------------------------------------------------------------------------


def test_the_window_is_local_time_and_may_cross_midnight() -> None:
    """01:00-07:00 Berlin holds 01:00 up to (not including) 07:00 local time; 22:00-06:00
    crosses midnight; the same UTC instant is inside or outside by the zone."""
    night = QuietHours(Time(1), Time(7), BERLIN)
    assert not night.active(epoch("2027-01-15T00:59:59"))
    assert night.active(epoch("2027-01-15T01:00:00"))
    assert night.active(epoch("2027-01-15T06:59:59"))
    assert not night.active(epoch("2027-01-15T07:00:00"))
    late = QuietHours(Time(22), Time(6), BERLIN)
    assert late.active(epoch("2027-01-15T23:30:00")) and late.active(epoch("2027-01-16T05:00"))
    assert not late.active(epoch("2027-01-15T12:00:00"))
    assert not late.active(epoch("2027-01-15T21:59:00"))
    at = epoch("2027-01-15T06:30:00", "UTC")  # 07:30 in Berlin
    assert QuietHours(Time(1), Time(7), "UTC").active(at) and not night.active(at)


def test_the_window_follows_daylight_saving_time() -> None:
    """On the night clocks go forward (2027-03-28, 02:00 -> 03:00 in Berlin) and back
    (2027-10-31, 03:00 -> 02:00) the window still opens and ends on the local clock, so
    it is 5 hours long in spring and 7 in autumn."""
    night = QuietHours(Time(1), Time(7), BERLIN)
    for day, hours in (("2027-03-28", 5), ("2027-10-31", 7)):
        opens, ends = epoch(f"{day}T01:00:00"), epoch(f"{day}T07:00:00")
        assert (ends - opens) / 3600 == hours
        assert not night.active(opens - 1) and night.active(opens)
        assert night.active(ends - 1) and not night.active(ends)


# -- the digest's wording -------------------------------------------------------------


def alert(metric: str, state: str, at: int, started: int, rate: float = 0.0) -> Alert:
    return Alert(metric, state, at, "notify", -5.0, rate, 50.0, f"{metric}@{started}", started,
                 -3.0)


def test_summarize_puts_each_incident_once_in_its_section() -> None:
    """Fired and resolved inside the window: one line with both times and how long it
    lasted; fired and still firing: still open; fired before the window and resolved
    inside it: resolved; a reminder of an incident still firing: still open; a reminder
    of one that is over: nothing."""
    held = [
        ("firing", alert("a", "firing", START, START)),
        ("resolved", alert("a", "resolved", START + 900, START, 48.0)),
        ("firing", alert("b", "firing", START + 60, START + 60)),
        ("reminder", alert("b", "firing", START + 1800, START + 60, 1.0)),
        ("resolved", alert("c", "resolved", START + 300, START - 3600, 49.0)),
        ("reminder", alert("d", "firing", START + 1800, START - 7200, 2.0)),
        ("reminder", alert("e", "firing", START + 1800, START - 7200)),
    ]
    states = {
        "a": {"incident_id": f"a@{START}", "state": "ok", "resolved_at": str(START + 900)},
        "b": {"incident_id": f"b@{START + 60}", "state": "firing"},
        "c": {"incident_id": f"c@{START - 3600}", "state": "ok"},
        "d": {"incident_id": f"d@{START - 7200}", "state": "firing"},
        "e": {"incident_id": f"e@{START - 7200}", "state": "ok"},
    }
    digest = summarize(held, states)
    assert [(x.alert.metric, x.fired_at, x.resolved_at) for x in digest.fired_and_resolved] == [
        ("a", START, START + 900)]
    assert [(x.alert.metric, x.rate) for x in digest.still_open] == [("d", 2.0), ("b", 1.0)]
    assert [(x.alert.metric, x.resolved_at) for x in digest.resolved] == [("c", START + 300)]
    text, blocks = digest_message(digest, BERLIN)
    assert text == ":crescent_moon: Quiet hours digest: 2 still open, 1 fired and resolved, " \
                   "1 resolved"
    said = "\n".join(b["text"]["text"] for b in blocks)
    assert "• `a` fell to 0/s (50.0/s normal) at 09:00 CET, back at 09:15 CET after 15 min" in said
    assert "• `b` down since 09:01 CET: 1.0/s vs 50.0/s normal" in said
    assert "• `c` back to 49.0/s (50.0/s normal) at 09:05 CET, after 65 min down" in said
    from slack_sdk.models.blocks import Block

    for raw in blocks:
        block = Block.parse(raw)
        assert block is not None
        block.validate_json()


# -- holding and the digest, on the incidents --------------------------------------------


def test_blind_and_reminders_are_held_and_a_page_never_is(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """Inside the window the "monitoring blind" incident (notify), a reminder of a
    notify incident and the resolve of another are held in Redis, not posted; a page
    goes out at once. After the window one digest lists the blind incident as fired and
    resolved, the reminded one as still open and the other as resolved, whose firing
    message (posted before the window) is edited to show the resolve; the transitions
    are marked sent by the digest, nothing stays pending."""
    slack = SlackNotifier(token=TOKEN, channel="#oncall", base_url=stub.slack_api_url)
    incidents = Incidents(store, Route({"slack": slack}), clock=clock)
    quiet = QuietHold(store, incidents.outbox, QuietHours(Time(1), Time(7), BERLIN), clock=clock)
    clock.now = epoch("2027-01-15T00:00:00")
    incidents.fire(SIGNUPS, int(clock.now), "notify", -3, -5, 0.0, 50.0)  # before the window
    incidents.fire(NEWSLETTER, int(clock.now), "notify", -3, -5, 0.0, 50.0)
    incidents.retry_pending()
    clock.now = epoch("2027-01-15T02:00:00")
    at = int(clock.now)
    incidents.fire(BLIND_METRIC, at, BLIND_SEVERITY, -10, -30, 0.0, 50.0)
    incidents.remind(SIGNUPS, at + 60, -5, 0.0, 60)
    incidents.fire(ORDERS, at, "page", -3, -6, 0.0, 50.0)
    incidents.resolve(BLIND_METRIC, at + 600, 0, 49.0)
    incidents.resolve(NEWSLETTER, at + 900, 0, 48.0)
    incidents.retry_pending()
    told, told_too, page = stub.requests_to(POST)
    assert "`signups.completed`" in told.data["text"] and "`orders.created`" in page.data["text"]
    assert "`newsletter.opened`" in told_too.data["text"]
    assert stub.requests_to("/api/chat.update") == []
    assert sorted(store.held()) == sorted([f"{BLIND_METRIC}@{at}|firing",
                                           f"{BLIND_METRIC}@{at}|resolved",
                                           f"{SIGNUPS}@{at - 7200}|reminder",
                                           f"{NEWSLETTER}@{at - 7200}|resolved"])
    assert store.get_state(BLIND_METRIC)["pending"] == "firing,resolved"
    assert quiet.flush() == 0  # still quiet
    clock.now = epoch("2027-01-15T07:00:00")
    assert quiet.flush() == 1
    assert store.held() == {}
    incidents.retry_pending()
    *_, digest = stub.requests_to(POST)
    said = json.dumps(digest.data["blocks"], ensure_ascii=False)
    assert digest.data["text"] == (":crescent_moon: Quiet hours digest: 1 still open, "
                                   "1 fired and resolved, 1 resolved")
    assert (f"`{NEWSLETTER}` back to 48.0/s (50.0/s normal) at 02:15 CET, after 2 h 15 min "
            "down (since 00:00 CET)") in said
    [edit] = stub.requests_to("/api/chat.update")
    assert edit.data["ts"] == store.get_state(NEWSLETTER)["slack_ts"]
    assert "RESOLVED" in edit.data["text"] and "`newsletter.opened`" in edit.data["text"]
    assert store.get_state(NEWSLETTER)["pending"] == ""
    assert f"`{BLIND_METRIC}` fell to 0/s (50.0/s normal) at 02:00 CET, back at 02:10 CET" in said
    assert f"`{SIGNUPS}` down since 00:00 CET" in said
    st = store.get_state(BLIND_METRIC)
    assert (st["pending"], st["sent:slack:firing"], st["sent:slack:resolved"]) == (
        "", "digest", "digest")
    assert quiet.flush(clock.now + 3600) == 0
    incidents.retry_pending()
    assert len(stub.requests_to(POST)) == 4


# -- the worker across the window --------------------------------------------------------


def quiet_rules(stub: Recorder, end: str = "09:20") -> RuleSet:
    text = f"""
[[rule]]
metric = "{ORDERS}"

[[rule]]
metric = "{SIGNUPS}"
severity = "notify"

[[rule]]
metric = "{NEWSLETTER}"
severity = "notify"

[quiet_hours]
start = "08:30"
end = "{end}"
timezone = "{BERLIN}"

[slack]
channel = "#oncall"
base_url = "{stub.slack_api_url}"

[pagerduty]
url = "{stub.pagerduty_url}"
"""
    return parse_rules(text, "<quiet rules>",
                       env={SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


def slack_about(stub: Recorder, metric: str) -> list[Any]:
    return [r for r in stub.requests if r.path.startswith("/api/")
            and f"`{metric}`" in r.data["text"]]


def test_notify_alerts_wait_for_one_digest_and_pages_do_not(
    store: Store, clock: FakeClock, stub: Recorder, redis_url: str
) -> None:
    """09:00-09:20 Berlin is quiet. Sign-ups fall (notify): nothing is posted; the
    worker restarts mid-window; sign-ups recover: still nothing. Orders fall (page):
    PagerDuty and Slack at once, and the resolve too. The newsletter falls and stays
    down. At 09:20 exactly one digest is posted: sign-ups fired and resolved, the
    newsletter still open; no page appears in it, and no second digest follows."""
    assert clock.now == START + 0.5
    traffic = Traffic(store, clock, [ORDERS, SIGNUPS, NEWSLETTER])
    traffic.prefill()
    worker = traffic.worker(quiet_rules(stub))
    traffic.run(worker, 60)
    traffic.run(worker, 120, signups_completed=0)
    assert traffic.states(SIGNUPS) == ["firing"]
    assert stub.requests == []
    assert list(store.held()) == [f"{SIGNUPS}@{START + 60 + _fired(traffic, SIGNUPS)}|firing"]

    worker.close()  # a restart in the middle of the window
    restarted = Store.from_url(redis_url, prefix=store.prefix)
    try:
        traffic.store = restarted
        worker = traffic.worker(quiet_rules(stub))
        traffic.run(worker, 300, signups_completed=RATE)
        assert traffic.states(SIGNUPS) == ["firing", "resolved"]
        assert stub.requests == []
        assert len(restarted.held()) == 2

        traffic.run(worker, 30, orders_created=0)
        assert [r.json["event_action"] for r in stub.requests_to(PAGERDUTY_PATH)] == ["trigger"]
        assert len(slack_about(stub, ORDERS)) == 1
        traffic.run(worker, 300, orders_created=RATE)
        assert [r.json["event_action"] for r in stub.requests_to(PAGERDUTY_PATH)] == [
            "trigger", "resolve"]
        traffic.run(worker, 90, newsletter_opened=0)
        assert traffic.states(NEWSLETTER) == ["firing"]
        before = len(stub.requests)
        assert slack_about(stub, SIGNUPS) == slack_about(stub, NEWSLETTER) == []

        end = epoch("2027-01-15T09:20:00")
        traffic.run(worker, int(end - clock.now) - 1)  # the last quiet second
        assert len(stub.requests) == before and len(restarted.held()) == 3
        traffic.run(worker, 5)
        digests = [r for r in stub.requests_to(POST) if "Quiet hours digest" in r.data["text"]]
        assert len(digests) == 1
        [digest] = digests
        assert digest.data["text"] == (":crescent_moon: Quiet hours digest: 1 still open, "
                                       "1 fired and resolved, 0 resolved")
        said = json.dumps(digest.data["blocks"], ensure_ascii=False)
        assert f"`{SIGNUPS}` fell to" in said and f"`{NEWSLETTER}` down since" in said
        assert ORDERS not in said
        assert restarted.held() == {}
        for metric in (SIGNUPS, NEWSLETTER):
            assert restarted.get_state(metric)["pending"] == ""
        traffic.run(worker, 60)
        assert len([r for r in stub.requests_to(POST) if "digest" in r.data["text"]]) == 1
        traffic.run(worker, 300, newsletter_opened=RATE)  # after the window: at once
        [resolved] = [r for r in slack_about(stub, NEWSLETTER)]
        assert "RESOLVED" in resolved.data["text"]
    finally:
        restarted.close()


def _fired(traffic: Traffic, metric: str) -> int:
    """Seconds after the drop began that ``metric`` fired."""
    [firing] = [a for a in traffic.alerts if a.metric == metric and a.state == "firing"]
    return firing.at - (START + 60)
