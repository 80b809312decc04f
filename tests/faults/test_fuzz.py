"""Fuzzing what a user controls — rules files, backtest CSVs, event names, command-line
options — with hypothesis: each input either works or gets one clear error line and a
non-zero exit; never a traceback, never an unexpected exception."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cliffwatch
from cliffwatch.alerting.cli import main
from cliffwatch.errors import EventNameError
from cliffwatch.metrics import bus

CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
UNREACHABLE = "redis://127.0.0.1:1/0"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CLIFFWATCH_* settings of the caller; Redis unreachable, so nothing long-lived
    can start; the process's signal handlers as they were (the worker installs its own)."""
    for name in list(os.environ):
        if name.startswith("CLIFFWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLIFFWATCH_REDIS_URL", UNREACHABLE)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, catch_exceptions=True)


def assert_clean(result: Result, args: list[str]) -> None:
    """Success, or exit 1/2 with one ``Error:`` line (usage errors: a usage block ending
    in one ``Error:`` line; a command group alone: its help, exit 2); never another
    exception, never a traceback."""
    where = f"cliffwatch {args!r}"
    if result.exit_code == 0:
        assert result.exception is None, (where, result.exception)
        return
    assert isinstance(result.exception, SystemExit), (where, repr(result.exception))
    assert result.exit_code in (1, 2), (where, result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, where
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    if result.exit_code == 2 and not errors:  # a group without its command: the help
        assert result.stderr.startswith("Usage:"), (where, result.stderr)
        return
    assert len(errors) == 1, (where, result.stderr)
    if result.exit_code == 1:
        assert result.stderr.splitlines() == errors, (where, result.stderr)


# -- rules files ----------------------------------------------------------------------

KEYS = ["metric", "severity", "threshold", "min_rate", "description", "runbook", "channel",
        "base_url", "token_env", "url", "source", "routing_key_env", "token", "key",
        "thresold", "webhook_url_env", "slack_channel", "pagerduty", "dashboard", "start",
        "end", "timezone", "payments", ""]
VALUES = ['"orders.created"', '"payments.*"', '"page"', '"notify"', '"Page"', "-3.0", "-4",
          "0", "1e400", "nan", "inf", "-inf", "true", '"#oncall"', '"http://127.0.0.1:9/"',
          '"ftp://x"', '"MY_VAR"', '"1BAD"', "[1, 2]", "{a = 1}", "1979-05-27", '"\\u0000"',
          '""', '"[ab"', "9" * 5000, '"Ünïcode ✓"', '"""multi\nline"""', "'lit'", '"01:00"',
          "07:30:00", '"Europe/Berlin"', '"Mars/Olympus"', '{routing_key_env = "PD_KEY"}']
TABLES = ["[[rule]]", "[defaults]", "[slack]", "[pagerduty]", "[rule]", "[[slack]]",
          "[other]", "[[rule.sub]]", "[quiet_hours]", "[pagerduty.services]", ""]

rules_lines = st.one_of(
    st.sampled_from(TABLES),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.text(max_size=40),
)
rules_texts = st.one_of(
    st.lists(rules_lines, max_size=12).map("\n".join),
    st.text(max_size=200),
)


@FUZZ
@given(text=rules_texts, raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_fuzzed_rules_files_are_accepted_or_refused_in_one_line(
    tmp_path: Path, text: str, raw: bytes | None
) -> None:
    """`rules check` and `worker --rules` on generated rules files (TOML-like lines,
    arbitrary text, arbitrary bytes): ok, or one error line and exit 1."""
    path = tmp_path / "rules.toml"
    path.write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    for args in (["rules", "check", str(path)], ["worker", "--rules", str(path)]):
        result = invoke(args)
        assert_clean(result, args)
        if args[0] == "rules" and result.exit_code == 0:
            assert result.stdout.startswith(f"{path}: ok, ")


# -- backtest CSVs --------------------------------------------------------------------

cells = st.one_of(st.integers(0, 10**6).map(str), st.just(""), st.sampled_from(
    ["-1", "1.5", "1e400", "nan", "inf", "x", " 3", "0x10", "9" * 400, "\u00a0", '"1"']))
names = st.one_of(st.sampled_from(["orders.created", "signups", "a", "b-c_d.e"]),
                  st.text(max_size=12))


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    columns = draw(st.lists(names, min_size=0, max_size=3))
    header = draw(st.sampled_from(["timestamp", "timestamp", "time", ""]))
    lines = [",".join([header, *columns])]
    start = draw(st.integers(-10, 2_000_000_000))
    gaps = draw(st.booleans())
    for k in range(draw(st.integers(0, 40))):
        second = start + k + (draw(st.integers(0, 2)) if gaps else 0)
        stamp = draw(st.one_of(st.just(str(second)), st.just(str(second)),
                               st.sampled_from(["", "abc", "1.5", "-"])))
        row = [draw(cells) for _ in range(len(columns) + draw(st.sampled_from([0, 0, 0, 1])))]
        lines.append(",".join([stamp, *row]))
        if draw(st.integers(0, 20)) == 0:
            lines.append("")
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


@FUZZ
@given(data=st.one_of(csv_files(), st.binary(max_size=200)), zipped=st.booleans())
def test_fuzzed_backtest_csvs_replay_or_fail_in_one_line(
    tmp_path: Path, data: bytes, zipped: bool
) -> None:
    """`backtest` on generated counts files (plain or gzipped; wrong headers, gaps,
    garbage cells, arbitrary bytes): JSON lines, or one error line and exit 1."""
    path = tmp_path / ("counts.csv.gz" if zipped else "counts.csv")
    path.write_bytes(gzip.compress(data) if zipped else data)
    args = ["backtest", str(path)]
    result = invoke(args)
    assert_clean(result, args)


# -- event names ----------------------------------------------------------------------

any_names = st.one_of(
    st.text(max_size=250), st.from_regex(r"[a-z0-9_.\-]{1,210}", fullmatch=True),
    st.integers(), st.none(), st.binary(max_size=10), st.floats(),
)


@FUZZ
@given(name=any_names, count=st.one_of(st.integers(-5, 10**12), st.floats(), st.text(max_size=3)))
def test_fuzzed_event_names_never_raise_from_emit_and_are_named_by_signal(
    name: object, count: object
) -> None:
    """emit() never raises, whatever the name and count (before configure it is a
    no-op); signal() accepts a valid name or raises EventNameError in one line naming
    the value."""
    cliffwatch.emit(name, count)  # type: ignore[arg-type]
    try:
        cliffwatch.signal(name)  # type: ignore[arg-type]
    except EventNameError as exc:
        message = str(exc)
        assert "\n" not in message and repr(name)[:40] in message
    bus._reset_registry()


# -- command-line options -------------------------------------------------------------

TOKENS = ["status", "--json", "rules", "check", "backtest", "silence", "add", "list",
          "remove", "worker", "--rules", "--warmup", "--prefix", "--redis-url", "--for",
          "--reason", "-v", "-vv", "--version", "--help", "--nope", "x", "orders.*",
          "30m", "0", "-1", "99999999999999999999", "1d2h", "40d", "", "nowhere.toml",
          "redis://:pw@127.0.0.1:1/0", "rediss://u:p@[::1", "http://x", "unix:///nope",
          "Ünï", "--rules=", "--", "-"]


@FUZZ
@given(args=st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=7))
def test_fuzzed_command_lines_succeed_or_fail_in_one_line(args: list[str]) -> None:
    """Generated command lines (subcommands, options, odd values; Redis unreachable):
    success, or a usage/one-line error and exit 1 or 2, never an exception."""
    if "demo" in args or "--watch" in args:  # long-running by design
        return
    assert_clean(invoke(args), args)


# -- the real console script ----------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["rules", "check", "{dir}/bad.toml"],
    ["worker", "--rules", "{dir}/bad.toml"],
    ["backtest", "{dir}/bad.csv"],
    ["backtest", "--rules", "{dir}/bad.toml", "{dir}/bad.csv"],
    ["status", "--redis-url", "rediss://u:p@[::1"],
    ["silence", "add", "Orders Created", "--for", "1y", "--reason", ""],
    ["worker", "--rules", "{dir}/good.toml", "--warmup", "-3"],
])
def test_the_console_script_never_prints_a_traceback(tmp_path: Path, args: list[str]) -> None:
    """The installed `cliffwatch` command, as a process, fails on bad input with exit 1 or
    2 and no traceback on stderr."""
    (tmp_path / "bad.toml").write_bytes(b'[[rule]]\nmetric = "x"\nthreshold = 1e400\n\xff')
    (tmp_path / "bad.csv").write_text("timestamp,orders.created\n1,2\n2,-3\n")
    (tmp_path / "good.toml").write_text('[[rule]]\nmetric = "orders.created"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
    env["CLIFFWATCH_REDIS_URL"] = UNREACHABLE
    argv = [a.format(dir=tmp_path) for a in args]
    done = subprocess.run([str(CLIFFWATCH), *argv], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode in (1, 2), (argv, done.returncode, done.stdout)
    assert "Traceback" not in done.stderr, done.stderr
    assert sum(line.startswith("Error:") for line in done.stderr.splitlines()) == 1, done.stderr
