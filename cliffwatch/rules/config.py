"""The rules file: which metrics are watched, how steep a drop fires, and where alerts go.

A rules file is TOML (read with :mod:`tomllib`)::

    [defaults]
    severity = "page"      # "page": PagerDuty + Slack; "notify": Slack only
    threshold = -3.0       # fire when the score is at or below this; -4.0 asks for steeper drops
    min_rate = 0.0         # events/s below which a metric is too quiet to judge
    reminder = "30m"       # re-notify Slack while an incident fires; "0" turns it off

    [[rule]]
    metric = "orders.created"   # an exact name, or a glob like "payments.*"
    threshold = -4.0            # optional, else [defaults]; also severity, min_rate,
                                # description, runbook, dashboard (http(s) URLs)
    slack_channel = "#orders"   # optional: this rule's Slack channel, else [slack]'s
    pagerduty = "payments"      # optional: a service of [pagerduty.services]

    [quiet_hours]               # optional: "notify" alerts wait for a digest
    start = "01:00"             # local time in `timezone` (a window may cross midnight)
    end = "07:00"
    timezone = "Europe/Berlin"  # an IANA time zone name

    [slack]
    channel = "#oncall"         # token from $CLIFFWATCH_SLACK_TOKEN,
                                # or webhook from $CLIFFWATCH_SLACK_WEBHOOK_URL
    [pagerduty]
    source = "shop-prod"        # routing key from $CLIFFWATCH_PAGERDUTY_ROUTING_KEY
    runbook = "https://..."     # optional links sent with every page (a rule's win)
    [pagerduty.services]        # optional: more services, each with its own key
    payments = {routing_key_env = "PD_PAYMENTS_KEY"}
    [alertmanager]
    url = "http://am:9093"      # optional: push alerts to an Alertmanager (API v2)
    labels = {team = "shop"}    # optional extra labels (also in [webhook])
    [webhook]
    url = "https://..."         # optional: POST Alertmanager's webhook JSON here

Secrets are never read from the file, only from the environment (``token_env``,
``webhook_url_env`` and ``routing_key_env`` rename the variables). Every problem raises
:class:`~cliffwatch.errors.RulesError` with one line, ``FILE:LINE: what is wrong``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as Time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from cliffwatch.errors import RulesError

PAGE = "page"
NOTIFY = "notify"
SEVERITIES = (PAGE, NOTIFY)
DEFAULT_SEVERITY = PAGE
DEFAULT_THRESHOLD = -3.0
DEFAULT_MIN_RATE = 0.0  # events/s
DEFAULT_REMINDER_S = 1800
"""Seconds between Slack reminders of an incident that is still firing."""
MIN_REMINDER_S = 60
SLACK_BASE_URL = "https://slack.com/api/"
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SOURCE = "cliffwatch"
SLACK_TOKEN_ENV = "CLIFFWATCH_SLACK_TOKEN"
SLACK_WEBHOOK_URL_ENV = "CLIFFWATCH_SLACK_WEBHOOK_URL"
PAGERDUTY_ROUTING_KEY_ENV = "CLIFFWATCH_PAGERDUTY_ROUTING_KEY"

_TABLES = ("defaults", "rule", "slack", "pagerduty", "alertmanager", "webhook", "quiet_hours")
_DEFAULT_KEYS = ("severity", "threshold", "min_rate")
_LINK_KEYS = ("runbook", "dashboard")
_RULE_KEYS = ("metric", *_DEFAULT_KEYS, "description", *_LINK_KEYS, "slack_channel", "pagerduty")
_SLACK_KEYS = ("channel", "base_url", "token_env", "webhook_url_env")
_PAGERDUTY_KEYS = ("url", "source", "routing_key_env", *_LINK_KEYS, "services")
_SERVICE_KEYS = ("routing_key_env", "source")
_QUIET_KEYS = ("start", "end", "timezone")
_SINK_KEYS = ("url", "labels")  # [alertmanager] and [webhook]
# secret-looking key -> the environment setting that holds that secret
_SECRETS = {
    "token": "token_env",
    "bot_token": "token_env",
    "api_token": "token_env",
    "webhook_url": "webhook_url_env",
    "webhook": "webhook_url_env",
    "routing_key": "routing_key_env",
    "integration_key": "routing_key_env",
    "service_key": "routing_key_env",
    "password": "",
    "secret": "",
    "api_key": "",
    "key": "",
}
_ENV_DEFAULTS = {
    "token_env": SLACK_TOKEN_ENV,
    "webhook_url_env": SLACK_WEBHOOK_URL_ENV,
    "routing_key_env": PAGERDUTY_ROUTING_KEY_ENV,
}
_NAME = re.compile(r"[a-z0-9_.\-]{1,200}")
_GLOB = re.compile(r"[a-z0-9_.\-*?\[\]!]{1,200}")
_GLOB_SET = re.compile(r"\[!?[^\]]+\]")
_REMINDER = re.compile(r"(?:\d{1,6}[smhd])+")
_REMINDER_PART = re.compile(r"(\d+)([smhd])")
_REMINDER_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_CHANNEL = re.compile(r"[^\s]{1,200}")
_RULE_CHANNEL = re.compile(r"[^\s,:]{1,200}")  # it becomes part of a notifier's name
_SERVICE = re.compile(r"[A-Za-z0-9_\-]{1,100}")
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
RESERVED_LABELS = ("alertname", "metric", "severity")
"""Alert labels cliffwatch sets itself; ``labels`` may not replace them."""


@dataclass(frozen=True, slots=True)
class RuleDefaults:
    """What a ``[[rule]]`` gets for each setting it leaves out (the ``[defaults]`` table)."""

    severity: str = DEFAULT_SEVERITY
    threshold: float = DEFAULT_THRESHOLD
    min_rate: float = DEFAULT_MIN_RATE


@dataclass(frozen=True, slots=True)
class Rule:
    """How one metric, or every metric matching a glob, is watched.

    ``severity`` is ``"page"`` (PagerDuty and Slack) or ``"notify"`` (Slack only); the
    rule fires when the drop score is at or below ``threshold`` (< 0) and the metric's
    normal rate is above ``min_rate`` events/s. ``line`` is where the rule starts in its
    file (0 when it did not come from a file).
    """

    metric: str
    severity: str
    threshold: float
    min_rate: float
    description: str = ""
    runbook: str = ""
    line: int = 0
    dashboard: str = ""
    slack_channel: str = ""
    """The Slack channel this rule's alerts go to; ``""``: ``[slack] channel``."""
    pagerduty: str = ""
    """The ``[pagerduty.services]`` service this rule pages; ``""``: ``[pagerduty]``."""

    @property
    def is_glob(self) -> bool:
        """True when ``metric`` is an fnmatch pattern rather than one exact name."""
        return any(c in self.metric for c in "*?[")


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """Where Slack alerts go. Secrets come from the environment; ``repr`` never shows them.

    ``token`` (posting to ``channel`` through the Web API at ``base_url``) is used when both
    it and ``channel`` are set; otherwise ``webhook_url``, which posts to the channel it
    was created for. Both ``None`` means nothing can be posted (a warning says so).
    """

    channel: str | None
    base_url: str = SLACK_BASE_URL
    token: str | None = None
    webhook_url: str | None = None
    token_env: str = SLACK_TOKEN_ENV
    webhook_url_env: str = SLACK_WEBHOOK_URL_ENV

    @property
    def enabled(self) -> bool:
        """True when a token or a webhook URL is available."""
        return self.token is not None or self.webhook_url is not None

    def __repr__(self) -> str:
        return (
            f"SlackSettings(channel={self.channel!r}, base_url={self.base_url!r}, "
            f"token={_hidden(self.token)}, webhook_url={_hidden(self.webhook_url)})"
        )


@dataclass(frozen=True, slots=True)
class PagerDutyService:
    """One named PagerDuty service of ``[pagerduty.services]``, paged by the rules that
    name it (``pagerduty = "<name>"``). Its routing key comes from the environment;
    ``repr`` never shows it; ``None``: that service cannot be paged (a warning says so)."""

    name: str
    routing_key: str | None
    routing_key_env: str
    source: str = PAGERDUTY_SOURCE

    def __repr__(self) -> str:
        return (
            f"PagerDutyService(name={self.name!r}, source={self.source!r}, "
            f"routing_key={_hidden(self.routing_key)})"
        )


@dataclass(frozen=True, slots=True)
class PagerDutySettings:
    """Where pages go (Events API v2). The routing key comes from the environment; ``repr``
    never shows it. ``routing_key`` ``None`` means nothing can be paged (a warning says so).

    ``runbook`` and ``dashboard`` are links sent with every page whose rule has none of
    its own; ``services`` are further services, by name, for rules that ask for one.
    """

    url: str = PAGERDUTY_URL
    source: str = PAGERDUTY_SOURCE
    routing_key: str | None = None
    routing_key_env: str = PAGERDUTY_ROUTING_KEY_ENV
    runbook: str = ""
    dashboard: str = ""
    services: Mapping[str, PagerDutyService] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when a routing key is available."""
        return self.routing_key is not None

    def __repr__(self) -> str:
        return (
            f"PagerDutySettings(url={self.url!r}, source={self.source!r}, "
            f"routing_key={_hidden(self.routing_key)}, services={list(self.services)!r})"
        )


@dataclass(frozen=True, slots=True)
class QuietHours:
    """``[quiet_hours]``: the daily window, in local time of ``timezone``, during which
    ``notify`` alerts are held for a digest (see :mod:`cliffwatch.alerting.quiet`).

    ``start`` is inside the window, ``end`` is not; ``end`` before ``start`` means the
    window crosses midnight. Local time is the wall clock of ``timezone`` (zoneinfo), so
    the window follows daylight saving time. ``line`` is where the table starts.
    """

    start: Time
    end: Time
    timezone: str
    line: int = 0

    def active(self, epoch: float) -> bool:
        """True when epoch second ``epoch`` falls inside the window."""
        local = datetime.fromtimestamp(epoch, tz=zoneinfo.ZoneInfo(self.timezone))
        now = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """Where ``[alertmanager]`` (the Alertmanager's base URL) or ``[webhook]`` (the URL
    that takes Alertmanager's webhook JSON) sends alerts, with extra alert labels."""

    url: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleSet:
    """The rules in force, in file order, and where alerts go.

    ``warnings`` lists things that work but are probably not meant, such as rules that
    page with no PagerDuty routing key available (``cliffwatch rules check`` prints them).
    """

    path: str | None
    rules: tuple[Rule, ...]
    defaults: RuleDefaults = RuleDefaults()
    slack: SlackSettings | None = None
    pagerduty: PagerDutySettings | None = None
    warnings: tuple[str, ...] = ()
    reminder_s: int = DEFAULT_REMINDER_S
    """Seconds between Slack reminders of a firing incident (``[defaults] reminder``);
    0: no reminders."""
    alertmanager: SinkSettings | None = None
    """``[alertmanager]``: every alert also goes to this Alertmanager."""
    webhook: SinkSettings | None = None
    """``[webhook]``: every alert also goes to this URL, as Alertmanager's webhook JSON."""
    quiet_hours: QuietHours | None = None
    """``[quiet_hours]``: when ``notify`` alerts are held for a digest."""
    _exact: dict[str, Rule] = field(init=False, repr=False, compare=False)
    _globs: tuple[tuple[re.Pattern[str], Rule], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, Rule] = {}
        globs: list[tuple[re.Pattern[str], Rule]] = []
        for rule in self.rules:
            if rule.is_glob:
                globs.append((re.compile(fnmatch.translate(rule.metric)), rule))
            else:
                exact.setdefault(rule.metric, rule)
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_globs", tuple(globs))

    def match(self, metric: str) -> Rule | None:
        """The rule for ``metric``: its exact rule, else the first matching glob in file
        order, else ``None`` (the metric is not watched)."""
        rule = self._exact.get(metric)
        if rule is not None:
            return rule
        for pattern, rule in self._globs:
            if pattern.match(metric):
                return rule
        return None

    def links(self, metric: str) -> tuple[tuple[str, str], ...]:
        """``(href, text)`` of the runbook and dashboard of ``metric``: its rule's, else
        ``[pagerduty]``'s; empty when there are none."""
        rule = self.match(metric)
        pd = self.pagerduty
        out = []
        for key, text in (("runbook", "Runbook"), ("dashboard", "Dashboard")):
            href = (getattr(rule, key) if rule else "") or (getattr(pd, key) if pd else "")
            if href:
                out.append((href, text))
        return tuple(out)

    def metrics(self, known: Iterable[str] = ()) -> list[str]:
        """The metrics to watch: every exact name in file order, then the ``known`` names
        (those seen in the store) that some glob matches, sorted; no name twice."""
        names = list(self._exact)
        seen = set(names)
        if self._globs:
            for name in sorted(set(known) - seen):
                if any(pattern.match(name) for pattern, _ in self._globs):
                    names.append(name)
        return names


def load_rules(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RuleSet:
    """Read and check the rules file at ``path``; secrets come from ``env`` (default
    ``os.environ``).

    Raises :class:`RulesError` naming the file (and line and key where there is one) if the
    file is missing, unreadable, not UTF-8, not TOML, or holds anything not described in
    the module docstring.
    """
    shown = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RulesError(f"{shown}: no such rules file") from None
    except IsADirectoryError:
        raise RulesError(f"{shown}: is a directory, not a rules file") from None
    except PermissionError:
        raise RulesError(f"{shown}: cannot read the rules file: permission denied") from None
    except OSError as exc:
        raise RulesError(f"{shown}: cannot read the rules file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise RulesError(
            f"{shown}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
            f"{column}); save the file as UTF-8"
        ) from None
    return parse_rules(text, shown, env)


def parse_rules(text: str, path: str = "<rules>", env: Mapping[str, str] | None = None) -> RuleSet:
    """Check the rules in ``text``; ``path`` only names it in messages.

    Raises :class:`RulesError` (``PATH:LINE: what is wrong``) on the first problem found.
    """
    return _Parser(text, path, os.environ if env is None else env).parse()


def default_rules(metrics: Iterable[str] = ()) -> RuleSet:
    """Rules for running without a rules file: each of ``metrics`` (exact names or globs)
    pages at threshold -3.0, or every metric does when none are given. No notifiers.

    Raises :class:`RulesError` for a name that is not a valid metric name or glob.
    """
    d = RuleDefaults()
    names = list(dict.fromkeys(metrics)) or ["*"]
    for name in names:
        problem = metric_problem(name)
        if problem:
            raise RulesError(problem)
    rules = tuple(Rule(name, d.severity, d.threshold, d.min_rate) for name in names)
    return RuleSet(path=None, rules=rules, defaults=d)


def _hidden(secret: str | None) -> str:
    return "None" if secret is None else "'<hidden>'"


def _quoted(name: str) -> str:
    """A key or name for a message: ``'name'``, escaped when not plainly printable."""
    if name.isprintable() and "'" not in name and len(name) <= 80:
        return f"'{name}'"
    return json.dumps(name if len(name) <= 80 else name[:77] + "...")


def _show(value: object) -> str:
    """A TOML value for a message, the way it would be written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(shown, ensure_ascii=not shown.isprintable())
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 40 else "a number too large to use"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


def _did_you_mean(word: str, choices: Iterable[str], fmt: str = "'{}'") -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {fmt.format(close[0])}?)" if close else ""


def label_problem(labels: Mapping[str, Any]) -> str:
    """Why ``labels`` cannot be extra alert labels, or ``""``: names must be Prometheus
    label names (``[A-Za-z_][A-Za-z0-9_]*``, not starting with ``__``), values strings,
    and none may be one of :data:`RESERVED_LABELS`."""
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name[:2] == "__":
            return (
                f"label name {_quoted(str(name))} must match [A-Za-z_][A-Za-z0-9_]* (no leading __)"
            )
        if name in RESERVED_LABELS:
            return f"label {_quoted(name)} is set by cliffwatch and cannot be configured"
        if not isinstance(value, str):
            return f"label {_quoted(name)} must have a string value, got {_show(value)}"
    return ""


def metric_problem(name: str) -> str:
    """Why ``name`` is not a valid metric name or glob, or ``""`` if it is."""
    if not any(c in name for c in "*?["):
        if _NAME.fullmatch(name):
            return ""
        hint = f"; did you mean {_quoted(name.lower())}?" if _NAME.fullmatch(name.lower()) else ""
        return (
            f"invalid metric name {_quoted(name)} (allowed: a-z 0-9 _ . -, "
            f"at most 200 characters{hint})"
        )
    if not _GLOB.fullmatch(name):
        return (
            f"invalid metric glob {_quoted(name)} (allowed: a-z 0-9 _ . - and the glob "
            f"characters * ? [ ] !, at most 200 characters)"
        )
    if any(c in "[]!" for c in _GLOB_SET.sub("", name)):
        return (
            f"invalid metric glob {_quoted(name)}: '[' ... ']' must enclose characters to "
            f'match, as in "payments.[ab]*", and "!" may only open a set, as in "[!x]"'
        )
    return ""


class _Section:
    __slots__ = ("path", "array", "line", "keys")

    def __init__(self, path: tuple[str, ...], array: bool, line: int) -> None:
        self.path, self.array, self.line = path, array, line
        self.keys: dict[str, int] = {}


_ARRAY_HEADER = re.compile(r"\s*\[\[([^\[\]]*)\]\]\s*(?:#.*)?$")
_TABLE_HEADER = re.compile(r"\s*\[([^\[\]]*)\]\s*(?:#.*)?$")
_KEY_PART = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
_KEY_LINE = re.compile(rf"\s*({_KEY_PART})\s*[.=]")
_KEY_PARTS = re.compile(_KEY_PART)


def _unquote(part: str) -> str:
    if part[:1] == '"':
        try:
            return str(json.loads(part))
        except ValueError:
            return part[1:-1]
    return part[1:-1] if part[:1] == "'" else part


def _scan(line: str, i: int, quote: str | None, depth: int) -> tuple[str | None, int]:
    """Continue through a value from ``line[i]``: (open multi-line string, bracket depth)."""
    n = len(line)
    while i < n:
        if quote is not None:
            if quote == '"""' and line[i] == "\\":
                i += 2
            elif line.startswith(quote, i):
                quote, i = None, i + 3
            else:
                i += 1
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            quote, i = line[i : i + 3], i + 3
        elif c == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        elif c == "'":
            end = line.find("'", i + 1)
            i = n if end < 0 else end + 1
        else:
            depth += (c in "[{") - (c in "]}")
            depth = max(depth, 0)
            i += 1
    return quote, depth


class _Lines:
    """Where tables and keys start in a TOML text (tomllib does not say), for messages.

    Headers and keys are recognised only outside multi-line strings and arrays; anything
    not found is reported at its table's header, or without a line.
    """

    def __init__(self, text: str) -> None:
        self.root = _Section((), False, 0)
        self.sections: list[_Section] = []
        self.repeated: dict[int, str] = {}  # line -> key set a second time in its table
        current = self.root
        quote: str | None = None
        depth = 0
        for number, line in enumerate(text.split("\n"), 1):
            if quote is not None or depth:
                quote, depth = _scan(line, 0, quote, depth)
                continue
            header = _ARRAY_HEADER.match(line) or _TABLE_HEADER.match(line)
            if header:
                parts = tuple(_unquote(p) for p in _KEY_PARTS.findall(header[1]))
                current = _Section(parts, line.lstrip().startswith("[["), number)
                self.sections.append(current)
                if len(parts) > 1:
                    parent = self._section(parts[0], 0) or self._last_array(parts[0])
                    if parent is not None:
                        parent.keys.setdefault(parts[1], number)
                    else:
                        self.root.keys.setdefault(parts[0], number)
                else:
                    self.root.keys.setdefault(parts[0] if parts else "", number)
                continue
            key = _KEY_LINE.match(line)
            if key:
                name = _unquote(key[1])
                if name in current.keys:
                    self.repeated[number] = name
                current.keys.setdefault(name, number)
                quote, depth = _scan(line, key.end(), None, 0)

    def _last_array(self, name: str) -> _Section | None:
        arrays = [s for s in self.sections[:-1] if s.path == (name,) and s.array]
        return arrays[-1] if arrays else None

    def _section(self, name: str, n: int) -> _Section | None:
        if not name:
            return self.root
        if n == 0:
            found = [s for s in self.sections if s.path == (name,) and not s.array]
            return found[0] if found else None
        arrays = [s for s in self.sections if s.path == (name,) and s.array]
        return arrays[n - 1] if len(arrays) >= n else None

    def line_in(self, path: tuple[str, ...], key: str) -> int:
        """Line of ``key`` in the sub-table ``[a.b]`` (``path``), or of its own header
        ``[a.b.key]``; 0 if neither is found."""
        for section in self.sections:
            if section.path == path and key in section.keys:
                return section.keys[key]
            if section.path == (*path, key):
                return section.line
        return 0

    def line(self, table: str, n: int = 0, key: str | None = None) -> int:
        """Line of ``key`` in ``[table]`` (``n`` 0) or in the nth ``[[table]]``; else of
        the table; else 0."""
        section = self._section(table, n)
        if section is None:
            return self.root.keys.get(table, 0)
        if key is not None and key in section.keys:
            return section.keys[key]
        return section.line


class _Parser:
    """One pass over a parsed rules document; stops at the first problem."""

    def __init__(self, text: str, path: str, env: Mapping[str, str]) -> None:
        self.text = text.removeprefix("\ufeff")
        self.path = path
        self.env = env
        self.lines = _Lines(self.text)

    def fail(self, line: int, message: str) -> NoReturn:
        where = f"{self.path}:{line}" if line > 0 else self.path
        raise RulesError(f"{where}: {message}".replace("\n", " ").replace("\r", " "))

    def parse(self) -> RuleSet:
        doc = self.load()
        for name, value in doc.items():
            if name not in _TABLES:
                self.unknown_top_level(name, value)
        defaults = self.defaults(self.table(doc, "defaults"))
        reminder_s = self.reminder(self.table(doc, "defaults") or {})
        rules = self.rules(doc.get("rule"), defaults)
        slack = self.slack(self.table(doc, "slack"))
        pagerduty = self.pagerduty(self.table(doc, "pagerduty"))
        alertmanager = self.sink(self.table(doc, "alertmanager"), "alertmanager")
        webhook = self.sink(self.table(doc, "webhook"), "webhook")
        quiet_hours = self.quiet_hours(self.table(doc, "quiet_hours"))
        self.check_routes(rules, slack, pagerduty)
        sinks = [name for name, s in (("Alertmanager", alertmanager), ("webhook", webhook)) if s]
        warnings = self.warnings(rules, slack, pagerduty, sinks)
        return RuleSet(
            self.path,
            rules,
            defaults,
            slack,
            pagerduty,
            warnings,
            reminder_s,
            alertmanager=alertmanager,
            webhook=webhook,
            quiet_hours=quiet_hours,
        )

    def check_routes(
        self, rules: tuple[Rule, ...], slack: SlackSettings | None, pd: PagerDutySettings | None
    ) -> None:
        """Every ``pagerduty = "<name>"`` of a rule names a ``[pagerduty.services]``
        service, and a rule's ``slack_channel`` has a ``[slack]`` to post with."""
        services = pd.services if pd is not None else {}
        for n, rule in enumerate(rules, 1):
            if rule.pagerduty and rule.pagerduty not in services:
                known = ", ".join(sorted(services)) or "none are defined"
                hint = _did_you_mean(rule.pagerduty, services)
                self.fail(
                    self.lines.line("rule", n, "pagerduty"),
                    f"unknown PagerDuty service {_show(rule.pagerduty)}{hint}: define it in "
                    f"[pagerduty.services] ({known})",
                )
            if rule.slack_channel and slack is None:
                self.fail(
                    self.lines.line("rule", n, "slack_channel"),
                    f"'slack_channel' {_show(rule.slack_channel)} needs a [slack] table "
                    "(the bot token is read as for [slack])",
                )

    def quiet_hours(self, raw: dict[str, Any] | None) -> QuietHours | None:
        """``[quiet_hours]``: ``start`` and ``end`` ("HH:MM", 24-hour, or TOML local
        times) and ``timezone`` (an IANA name, read with zoneinfo)."""
        if raw is None:
            return None
        self.check_keys(raw, _QUIET_KEYS, "quiet_hours", 0, {})
        for key in _QUIET_KEYS:
            if key not in raw:
                self.fail(
                    self.lines.line("quiet_hours"),
                    f'[quiet_hours] needs {_quoted(key)} (start = "01:00", end = "07:00", '
                    'timezone = "Europe/Berlin")',
                )
        start, end = self.clock_time(raw, "start"), self.clock_time(raw, "end")
        if start == end:
            self.fail(
                self.lines.line("quiet_hours", 0, "end"),
                f"[quiet_hours] 'end' must differ from 'start' (both {start:%H:%M}): "
                "the window would be empty",
            )
        zone = self.string(raw, "quiet_hours", 0, "timezone")
        self.time_zone(zone, self.lines.line("quiet_hours", 0, "timezone"))
        return QuietHours(start, end, zone, self.lines.line("quiet_hours"))

    def clock_time(self, raw: dict[str, Any], key: str) -> Time:
        value = raw[key]
        if isinstance(value, Time) and value.tzinfo is None:
            return value.replace(second=0, microsecond=0)
        found = _CLOCK.fullmatch(value.strip()) if isinstance(value, str) else None
        if not found:
            self.fail(
                self.lines.line("quiet_hours", 0, key),
                f'{_quoted(key)} must be a time of day "HH:MM" (24-hour, like "01:00" or '
                f'"23:30"), got {_show(value)}',
            )
        return Time(int(found[1]), int(found[2]))

    def time_zone(self, name: str, line: int) -> None:
        """Fail unless zoneinfo knows the zone ``name`` (saying so when this host has no
        time zone database at all: zoneinfo then knows no zone)."""
        try:
            zoneinfo.ZoneInfo(name)
            return
        except zoneinfo.ZoneInfoNotFoundError:
            pass
        except (ValueError, OSError):  # malformed keys ("../x", "/etc/x", "")
            pass
        known = zoneinfo.available_timezones()
        if not known:
            self.fail(
                line,
                f"unknown time zone {_show(name)}: this host has no time zone database "
                "(zoneinfo found none); install the tzdata package (pip install tzdata) "
                "or the system's tzdata",
            )
        close = [z for z in known if z.lower() == name.lower()]
        close = close or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        self.fail(
            line,
            f'unknown time zone {_show(name)}{hint}: use an IANA name like "Europe/Berlin", '
            '"America/New_York" or "UTC"',
        )

    def reminder(self, raw: dict[str, Any]) -> int:
        """``[defaults] reminder``: a duration (``"30m"``, ``"1h30m"``, at least 1 minute)
        or ``"0"`` (no reminders); absent: :data:`DEFAULT_REMINDER_S`."""
        if "reminder" not in raw:
            return DEFAULT_REMINDER_S
        value = raw["reminder"]
        line = self.lines.line("defaults", 0, "reminder")
        if value in ("0", 0) and not isinstance(value, bool):
            return 0
        text = value.strip().lower() if isinstance(value, str) else ""
        if not _REMINDER.fullmatch(text):
            self.fail(
                line,
                f'\'reminder\' must be a duration such as "30m", "2h" or "1h30m" '
                f'(or "0": no reminders), got {_show(value)}',
            )
        seconds = sum(int(n) * _REMINDER_UNITS[u] for n, u in _REMINDER_PART.findall(text))
        if seconds == 0:
            return 0
        if seconds < MIN_REMINDER_S:
            self.fail(line, f"'reminder' must be at least 1m (or \"0\"), got {_show(value)}")
        return seconds

    def load(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            self.syntax_error(str(exc))
        except RecursionError:
            self.fail(0, "TOML syntax error: arrays or tables nested too deeply")
        except ValueError:  # an integer with more digits than Python converts
            self.fail(0, "TOML syntax error: a number has too many digits (at most 4300)")

    def syntax_error(self, message: str) -> NoReturn:
        at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if at:
            line, column = int(at[1]), int(at[2])
        else:
            line, column = self.text.rstrip("\n").count("\n") + 1, 0
        what = re.sub(r" \(at [^()]*\)$", "", message)
        declared = re.fullmatch(r"Cannot declare \((.*)\) twice", what)
        if what == "Cannot overwrite a value" and line in self.lines.repeated:
            what = f"key {_quoted(self.lines.repeated[line])} is set twice in the same table"
        elif declared:
            name = ".".join(re.findall(r"'([^']*)'", declared[1]))
            what = f"table [{name}] is declared twice"
            if name == "rule":
                what += "; start every rule with [[rule]] (two brackets)"
        elif what == "Invalid value":
            what = 'invalid value (text needs quotes, as in channel = "#oncall")'
        else:
            what = what[:1].lower() + what[1:]
        at_column = f" at column {column}" if column else ""
        self.fail(line, f"TOML syntax error{at_column}: {what}")

    def unknown_top_level(self, name: str, value: object) -> NoReturn:
        line = self.lines.line(name)
        allowed = (
            "allowed: [defaults], [[rule]], [slack], [pagerduty], [alertmanager], [webhook], "
            "[quiet_hours]"
        )
        if name in _SECRETS and not isinstance(value, dict | list):
            self.secret_in_file("", name, "at the top level", {})
        if isinstance(value, dict):
            tables = ("defaults", "slack", "pagerduty", "alertmanager", "webhook", "quiet_hours")
            hint = _did_you_mean(name, tables, "[{}]")
            hint = hint or _did_you_mean(name, ("rule",), "[[{}]]")
            self.fail(line, f"unknown table [{name}]{hint or f' ({allowed})'}")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            hint = _did_you_mean(name, ("rule",), "[[{}]]")
            self.fail(line, f"unknown table [[{name}]]{hint or f' ({allowed})'}")
        if name in _RULE_KEYS:
            home = "[defaults] or a [[rule]]" if name in _DEFAULT_KEYS else "a [[rule]]"
            self.fail(line, f"key {_quoted(name)} must be inside {home}, not at the top level")
        self.fail(line, f"unknown top-level key {_quoted(name)} ({allowed})")

    def table(self, doc: dict[str, Any], name: str) -> dict[str, Any] | None:
        value = doc.get(name)
        if value is None or isinstance(value, dict):
            return value
        line = self.lines.line(name)
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            self.fail(line, f"[{name}] is a single table: write [{name}], not [[{name}]]")
        self.fail(line, f"{_quoted(name)} must be a table [{name}], got {_show(value)}")

    def check_keys(
        self,
        raw: dict[str, Any],
        allowed: tuple[str, ...],
        table: str,
        n: int,
        env_names: Mapping[str, str],
    ) -> None:
        where = f"[[{table}]] #{n}" if n else f"[{table}]"
        for key in raw:
            if key in allowed:
                continue
            if key in _SECRETS:
                self.secret_in_file(table, key, f"in {where}", env_names, n)
            line = self.lines.line(table, n, key)
            if key in _RULE_KEYS and table == "defaults":
                self.fail(line, f"key {_quoted(key)} belongs in a [[rule]], not in [defaults]")
            if key == "reminder" and table == "rule":
                self.fail(line, "key 'reminder' belongs in [defaults], not in a [[rule]]")
            hint = _did_you_mean(key, allowed)
            self.fail(line, f"unknown key {_quoted(key)} in {where}{hint}")

    def secret_in_file(
        self, table: str, key: str, where: str, env_names: Mapping[str, str], n: int = 0
    ) -> NoReturn:
        setting = _SECRETS[key] or {"slack": "token_env", "pagerduty": "routing_key_env"}.get(
            table, ""
        )
        line = self.lines.line(table, n, key)
        if not setting:
            self.fail(
                line,
                f"key {_quoted(key)} {where}: secrets are never read from the "
                "rules file, only from the environment",
            )
        variable = env_names.get(setting, _ENV_DEFAULTS[setting])
        self.fail(
            line,
            f"key {_quoted(key)} {where}: secrets are read from the "
            f"environment: set ${variable} and remove {_quoted(key)} from the file",
        )

    def number(self, value: object, line: int, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(line, f"{_quoted(key)} must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.fail(line, f"{_quoted(key)} must be a finite number, got {_show(value)}")
        return number

    def settings(self, raw: dict[str, Any], table: str, n: int, base: RuleDefaults) -> RuleDefaults:
        """severity, threshold and min_rate from ``raw``, else from ``base``."""
        severity, threshold, min_rate = base.severity, base.threshold, base.min_rate
        if "severity" in raw:
            severity = raw["severity"]
            if severity not in SEVERITIES:
                hint = ""
                if isinstance(severity, str) and severity.strip().lower() in SEVERITIES:
                    hint = f' (did you mean "{severity.strip().lower()}"?)'
                self.fail(
                    self.lines.line(table, n, "severity"),
                    f'severity must be "page" or "notify", got {_show(severity)}{hint}',
                )
        if "threshold" in raw:
            line = self.lines.line(table, n, "threshold")
            threshold = self.number(raw["threshold"], line, "threshold")
            if threshold >= 0:
                self.fail(
                    line,
                    f"'threshold' must be below 0, got {_show(raw['threshold'])}: "
                    "the score of normal traffic sits around 0, so a threshold "
                    "at or above 0 would page on normal traffic (try -3.0, or "
                    "-4.0 to fire only on steeper drops)",
                )
        if "min_rate" in raw:
            line = self.lines.line(table, n, "min_rate")
            min_rate = self.number(raw["min_rate"], line, "min_rate")
            if min_rate < 0:
                self.fail(
                    line,
                    "'min_rate' must be at least 0 (events per second), "
                    f"got {_show(raw['min_rate'])}",
                )
        return RuleDefaults(severity, threshold, min_rate)

    def defaults(self, raw: dict[str, Any] | None) -> RuleDefaults:
        if raw is None:
            return RuleDefaults()
        self.check_keys(raw, (*_DEFAULT_KEYS, "reminder"), "defaults", 0, {})
        return self.settings(raw, "defaults", 0, RuleDefaults())

    def string(self, raw: dict[str, Any], table: str, n: int, key: str) -> str:
        value = raw[key]
        if not isinstance(value, str):
            self.fail(
                self.lines.line(table, n, key),
                f"{_quoted(key)} must be a string, got {_show(value)}",
            )
        return value

    def rules(self, raw: object, defaults: RuleDefaults) -> tuple[Rule, ...]:
        if raw is None or raw == []:
            self.fail(
                0,
                "no [[rule]] tables (each metric to watch needs one: [[rule]] then "
                'metric = "orders.created")',
            )
        if isinstance(raw, dict):
            self.fail(
                self.lines.line("rule"),
                "[rule] must be written [[rule]] (two brackets), one table per rule",
            )
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            got = "an array of values that are not tables" if isinstance(raw, list) else _show(raw)
            self.fail(self.lines.line("rule"), f"'rule' must be [[rule]] tables, got {got}")
        rules: list[Rule] = []
        first_line: dict[str, int] = {}
        for n, table in enumerate(raw, 1):
            line = self.lines.line("rule", n)
            self.check_keys(table, _RULE_KEYS, "rule", n, {})
            if "metric" not in table:
                self.fail(
                    line,
                    f"[[rule]] #{n} has no 'metric' (an exact name like "
                    '"orders.created" or a glob like "payments.*")',
                )
            metric = self.string(table, "rule", n, "metric")
            metric_line = self.lines.line("rule", n, "metric")
            problem = metric_problem(metric)
            if problem:
                self.fail(metric_line, problem)
            if metric in first_line:
                kind = "glob" if any(c in metric for c in "*?[") else "metric"
                at = f" (first at line {first_line[metric]})" if first_line[metric] else ""
                self.fail(
                    metric_line,
                    f"duplicate rule for {kind} {_quoted(metric)}{at}: "
                    f"each {kind} may have only one rule (key 'metric')",
                )
            first_line[metric] = metric_line
            s = self.settings(table, "rule", n, defaults)
            description = (
                self.string(table, "rule", n, "description") if ("description" in table) else ""
            )
            runbook, dashboard = (self.link(table, "rule", n, key) for key in _LINK_KEYS)
            channel = ""
            if "slack_channel" in table:
                channel = self.string(table, "rule", n, "slack_channel")
                if not _RULE_CHANNEL.fullmatch(channel):
                    self.fail(
                        self.lines.line("rule", n, "slack_channel"),
                        "'slack_channel' must be a channel name like \"#payments\" or an "
                        f"ID (no spaces, commas or colons), got {_show(channel)}",
                    )
            service = self.string(table, "rule", n, "pagerduty") if "pagerduty" in table else ""
            rules.append(
                Rule(
                    metric,
                    s.severity,
                    s.threshold,
                    s.min_rate,
                    description,
                    runbook,
                    line,
                    dashboard,
                    channel,
                    service,
                )
            )
        return tuple(rules)

    def link(self, raw: dict[str, Any], table: str, n: int, key: str) -> str:
        """An optional http(s) URL (``runbook``, ``dashboard``); ``""`` when absent."""
        if key not in raw:
            return ""
        value = self.string(raw, table, n, key)
        if not _is_http_url(value):
            self.fail(
                self.lines.line(table, n, key),
                f"{_quoted(key)} must be an http(s) URL, got {_show(value)}",
            )
        return value

    def env_names(self, raw: dict[str, Any], table: str, keys: tuple[str, ...]) -> dict[str, str]:
        names: dict[str, str] = {}
        for key in keys:
            name = raw.get(key, _ENV_DEFAULTS[key])
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                self.fail(
                    self.lines.line(table, 0, key),
                    f"{_quoted(key)} must name an environment variable, like "
                    f'"MY_SECRET" (letters, digits, _), got {_show(name)}',
                )
            names[key] = name
        return names

    def secret(self, variable: str) -> str | None:
        value = self.env.get(variable, "").strip()
        return value or None

    def url(self, raw: dict[str, Any], table: str, key: str, default: str) -> str:
        if key not in raw:
            return default
        value = self.string(raw, table, 0, key)
        if not _is_http_url(value):
            self.fail(
                self.lines.line(table, 0, key),
                f"{_quoted(key)} must be an http(s) URL, got {_show(value)}",
            )
        return value

    def slack(self, raw: dict[str, Any] | None) -> SlackSettings | None:
        if raw is None:
            return None
        names = self.env_names(raw, "slack", ("token_env", "webhook_url_env"))
        self.check_keys(raw, _SLACK_KEYS, "slack", 0, names)
        channel: str | None = None
        if "channel" in raw:
            channel = self.string(raw, "slack", 0, "channel")
            if not _CHANNEL.fullmatch(channel):
                self.fail(
                    self.lines.line("slack", 0, "channel"),
                    f"'channel' must be a channel name like \"#oncall\" or an ID, "
                    f"got {_show(channel)}",
                )
        base_url = self.url(raw, "slack", "base_url", SLACK_BASE_URL)
        base_url = base_url if base_url.endswith("/") else base_url + "/"
        token = self.secret(names["token_env"])
        webhook_url = self.secret(names["webhook_url_env"])
        if webhook_url is not None and not _is_http_url(webhook_url):
            self.fail(
                self.lines.line("slack"),
                f"${names['webhook_url_env']} must be an http(s) URL (its value is not shown)",
            )
        if token is not None and webhook_url is None and channel is None:
            self.fail(
                self.lines.line("slack"),
                f"[slack] needs a 'channel' to post with the "
                f"token in ${names['token_env']} (key 'channel')",
            )
        return SlackSettings(
            channel, base_url, token, webhook_url, names["token_env"], names["webhook_url_env"]
        )

    def pagerduty(self, raw: dict[str, Any] | None) -> PagerDutySettings | None:
        if raw is None:
            return None
        names = self.env_names(raw, "pagerduty", ("routing_key_env",))
        self.check_keys(raw, _PAGERDUTY_KEYS, "pagerduty", 0, names)
        url = self.url(raw, "pagerduty", "url", PAGERDUTY_URL)
        source = PAGERDUTY_SOURCE
        if "source" in raw:
            source = self.string(raw, "pagerduty", 0, "source")
            if not source.strip():
                self.fail(self.lines.line("pagerduty", 0, "source"), "'source' must not be empty")
        key = self.secret(names["routing_key_env"])
        runbook, dashboard = (self.link(raw, "pagerduty", 0, k) for k in _LINK_KEYS)
        services = self.services(raw.get("services", {}))
        return PagerDutySettings(
            url, source, key, names["routing_key_env"], runbook, dashboard, services
        )

    def services(self, raw: object) -> dict[str, PagerDutyService]:
        """``[pagerduty.services]``: name = {routing_key_env = "VAR", source = "..."}."""
        line = self.lines.line("pagerduty", 0, "services")
        if not isinstance(raw, dict):
            self.fail(
                line,
                "'services' must be a table: [pagerduty.services] then "
                f'payments = {{routing_key_env = "PD_PAYMENTS_KEY"}}, got {_show(raw)}',
            )
        out: dict[str, PagerDutyService] = {}
        for name, spec in raw.items():
            at = self.lines.line_in(("pagerduty", "services"), name) or line
            if not _SERVICE.fullmatch(name):
                self.fail(
                    at,
                    f"PagerDuty service name {_quoted(name)} must be letters, digits, _ "
                    "and - (at most 100)",
                )
            if not isinstance(spec, dict):
                self.fail(
                    at,
                    f"PagerDuty service {_quoted(name)} must be a table like "
                    f'{{routing_key_env = "PD_{name.upper().replace("-", "_")}_KEY"}}, '
                    f"got {_show(spec)}",
                )
            where = f"[pagerduty.services] {_quoted(name)}"
            for key in spec:
                if key in _SECRETS:
                    self.fail(
                        at,
                        f"key {_quoted(key)} in {where}: secrets are read from the "
                        "environment: name the variable with routing_key_env",
                    )
                if key not in _SERVICE_KEYS:
                    hint = _did_you_mean(key, _SERVICE_KEYS)
                    self.fail(at, f"unknown key {_quoted(key)} in {where}{hint}")
            variable = spec.get("routing_key_env")
            if not isinstance(variable, str) or not _ENV_NAME.fullmatch(variable):
                self.fail(
                    at,
                    f"{where} needs 'routing_key_env', the environment variable holding its "
                    f"routing key (letters, digits, _), got {_show(variable)}",
                )
            source = spec.get("source", PAGERDUTY_SOURCE)
            if not isinstance(source, str) or not source.strip():
                self.fail(at, f"'source' of {where} must be a non-empty string")
            out[name] = PagerDutyService(name, self.secret(variable), variable, source)
        return out

    def sink(self, raw: dict[str, Any] | None, table: str) -> SinkSettings | None:
        """``[alertmanager]`` or ``[webhook]``: a required http(s) ``url`` and optional
        ``labels`` (a table of label name = "value")."""
        if raw is None:
            return None
        self.check_keys(raw, _SINK_KEYS, table, 0, {})
        if "url" not in raw:
            self.fail(self.lines.line(table), f"[{table}] needs a 'url' (url = \"http://...\")")
        url = self.url(raw, table, "url", "")
        labels = raw.get("labels", {})
        line = self.lines.line(table, 0, "labels")
        if not isinstance(labels, dict):
            self.fail(
                line, f"'labels' must be a table like {{team = \"shop\"}}, got {_show(labels)}"
            )
        problem = label_problem(labels)
        if problem:
            self.fail(line, f"[{table}] {problem}")
        return SinkSettings(url, dict(labels))

    def warnings(
        self,
        rules: tuple[Rule, ...],
        slack: SlackSettings | None,
        pagerduty: PagerDutySettings | None,
        sinks: list[str] | None = None,
    ) -> tuple[str, ...]:
        found: list[str] = []
        slack_ok = slack is not None and slack.enabled
        if slack is not None and not slack.enabled:
            found.append(
                f"[slack] is set but neither ${slack.token_env} nor "
                f"${slack.webhook_url_env} is: nothing will be posted to Slack"
            )
        pages = [r.metric for r in rules if r.severity == PAGE]
        if pages and not (pagerduty is not None and pagerduty.enabled):
            why = (
                f"no [pagerduty] routing key in ${pagerduty.routing_key_env}"
                if pagerduty is not None
                else "no [pagerduty] table"
            )
            goes = "go to Slack only" if slack_ok else "are only logged"
            if sinks:
                goes = "go to " + " and ".join((["Slack"] if slack_ok else []) + sinks) + " only"
            found.append(f'severity "page" but {why}: {_some(pages)} {goes}')
        if pagerduty is not None:
            for service in pagerduty.services.values():
                if service.routing_key is None:
                    users = [r.metric for r in rules if r.pagerduty == service.name]
                    found.append(
                        f"[pagerduty.services] {service.name!r} has no routing key in "
                        f"${service.routing_key_env}: "
                        + (f"{_some(users)} page nobody" if users else "no rule uses it")
                    )
        own = [r.metric for r in rules if r.slack_channel]
        if own and slack is not None and slack.token is None and slack.webhook_url is not None:
            found.append(
                f"'slack_channel' needs a bot token in ${slack.token_env}: with a webhook, "
                f"{_some(own)} go to the webhook's own channel"
            )
        notifies = [r.metric for r in rules if r.severity == NOTIFY]
        if notifies and not slack_ok and not sinks:
            why = "no [slack] table" if slack is None else "no Slack token or webhook URL"
            found.append(f'severity "notify" but {why}: {_some(notifies)} are only logged')
        return tuple(f"{self.path}: {w}" for w in found)


def _some(metrics: list[str]) -> str:
    shown = ", ".join(metrics[:3]) + (f" and {len(metrics) - 3} more" if len(metrics) > 3 else "")
    return f"alerts for {shown}"


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and value.isprintable()
