"""The ``cliffwatch`` command line: bad input gives one clear line and a non-zero exit,
never a traceback; settings come from options or ``CLIFFWATCH_*`` variables."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from cliffwatch.alerting.backtest import read_blocks
from cliffwatch.alerting.cli import main
from cliffwatch.metrics.store import Store

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "examples" / "rules.toml"
CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1
ALERT_KEYS = {"metric", "state", "at", "severity", "score", "rate", "baseline"}


@pytest.fixture(autouse=True)
def _no_cliffwatch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the caller's CLIFFWATCH_* settings."""
    for name in list(os.environ):
        if name.startswith("CLIFFWATCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty directory, so messages name files by their short relative path."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the command line in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, list(args), env=env)


def run_console_script(*args: str, env: dict[str, str] | None = None,
                       cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cliffwatch`` command as a separate process."""
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
    return subprocess.run([str(CLIFFWATCH), *args], env={**clean, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def one_error_line(stderr: str) -> str:
    """The single ``Error:`` line of ``stderr``; fails on a traceback or several errors."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_fails_with_one_line(result: Result, starts: str) -> str:
    """``result`` exited 1, printed nothing on stdout and exactly one line on stderr
    that begins ``Error: <starts>``; return that line."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    line = one_error_line(result.stderr)
    assert result.stderr.splitlines() == [line]
    assert line.startswith(f"Error: {starts}"), line
    return line


# -- rules files ----------------------------------------------------------------------

BAD_RULES = {
    "malformed-toml": ('[[rule]]\nmetric = "orders.created\n', 2, "TOML syntax error"),
    "unknown-key": ('[[rule]]\nmetric = "orders.created"\nthreshhold = -4.0\n', 3,
                    "unknown key 'threshhold'"),
    "wrong-type": ('[[rule]]\nmetric = "orders.created"\nthreshold = "high"\n', 3,
                   "'threshold' must be a number"),
    "bad-metric-name": ('[defaults]\nseverity = "page"\n\n[[rule]]\nmetric = "Orders Created"\n',
                        5, "invalid metric name 'Orders Created'"),
}


def test_rules_check_accepts_the_example_rules() -> None:
    """`rules check examples/rules.toml` exits 0 and says how many rules it holds."""
    result = cli("rules", "check", str(EXAMPLE_RULES))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{EXAMPLE_RULES}: ok, 3 rules\n"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_rules_check_names_file_and_line_of_a_bad_rules_file(in_tmp: Path, case: str) -> None:
    """`rules check` on a bad rules file prints one line FILE:LINE: reason and exits 1."""
    text, line, reason = BAD_RULES[case]
    (in_tmp / "rules.toml").write_text(text)
    message = assert_fails_with_one_line(cli("rules", "check", "rules.toml"),
                                         f"rules.toml:{line}: ")
    assert reason in message


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_worker_refuses_a_bad_rules_file_in_one_line(in_tmp: Path, case: str) -> None:
    """`worker --rules` with a bad rules file prints one line FILE:LINE: reason, exits 1."""
    text, line, reason = BAD_RULES[case]
    (in_tmp / "rules.toml").write_text(text)
    result = cli("worker", "--rules", "rules.toml", "--redis-url", UNREACHABLE)
    message = assert_fails_with_one_line(result, f"rules.toml:{line}: ")
    assert reason in message


@pytest.mark.parametrize("args", [
    ["rules", "check", "nowhere.toml"],
    ["worker", "--rules", "nowhere.toml", "--redis-url", UNREACHABLE],
])
def test_a_missing_rules_file_is_one_line(in_tmp: Path, args: list[str]) -> None:
    """A rules file that does not exist is named in one line, exit 1."""
    assert_fails_with_one_line(cli(*args), "nowhere.toml: no such rules file")


def test_worker_reads_the_rules_path_from_the_environment(in_tmp: Path) -> None:
    """`worker` without --rules takes CLIFFWATCH_RULES (here naming a broken file)."""
    (in_tmp / "env-rules.toml").write_text(BAD_RULES["unknown-key"][0])
    result = cli("worker", "--redis-url", UNREACHABLE,
                 env={"CLIFFWATCH_RULES": "env-rules.toml"})
    assert_fails_with_one_line(result, "env-rules.toml:3: unknown key")


# -- Redis settings -------------------------------------------------------------------


@pytest.fixture
def good_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nmetric = "orders.created"\n')
    return path


def test_worker_with_unreachable_redis_exits_with_one_line(good_rules: Path) -> None:
    """`worker` against a Redis nobody answers exits 1 with one error line naming the URL,
    its password masked."""
    url = "redis://watcher:s3cretpass@127.0.0.1:1/0"
    done = run_console_script("worker", "--rules", str(good_rules), "--redis-url", url)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert "redis://watcher:***@127.0.0.1:1/0" in line
    assert "s3cretpass" not in done.stderr + done.stdout


def test_worker_takes_the_redis_url_from_the_environment(good_rules: Path) -> None:
    """`worker` without --redis-url uses CLIFFWATCH_REDIS_URL (masked in the message)."""
    env = {"CLIFFWATCH_REDIS_URL": "redis://:envpass123@127.0.0.1:1/3"}
    done = run_console_script("worker", "--rules", str(good_rules), env=env)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert "redis://:***@127.0.0.1:1/3" in line
    assert "envpass123" not in done.stderr + done.stdout


def test_status_takes_redis_url_and_prefix_from_the_environment(
    redis_url: str, prefix: str
) -> None:
    """`status --json` reads CLIFFWATCH_REDIS_URL and CLIFFWATCH_PREFIX: it lists the
    metric flushed under that prefix."""
    store = Store.from_url(redis_url, prefix=prefix)
    try:
        store.write_counts({1_800_000_000: {"orders.created": 3}})
    finally:
        store.close()
    result = cli("status", "--json",
                 env={"CLIFFWATCH_REDIS_URL": redis_url, "CLIFFWATCH_PREFIX": prefix})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["metrics"]
    assert [(r["metric"], r["status"]) for r in rows] == [("orders.created", "not watched")]


def test_status_with_unreachable_redis_is_one_line() -> None:
    """`status` against a Redis nobody answers exits 1 with one line naming it."""
    result = cli("status", "--redis-url", UNREACHABLE)
    assert_fails_with_one_line(result, f"PING failed on Redis at {UNREACHABLE}")


# -- backtest -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["counts.csv", "counts.csv.gz"])
def test_backtest_of_a_short_good_file_prints_nothing(in_tmp: Path, name: str) -> None:
    """A short, well-formed counts file (plain or gzipped) backtests cleanly: exit 0 and
    no alert (an hour of data is far too little to judge)."""
    text = "timestamp,orders.created,signups.completed\n"
    text += "".join(f"{1_800_000_000 + k},{20 + k % 3},{'' if k % 7 else 1}\n"
                    for k in range(3600))
    data = text.encode()
    (in_tmp / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    result = cli("backtest", name)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_backtest_prints_one_json_line_per_transition(in_tmp: Path) -> None:
    """A day of steady traffic, a five-minute outage and recovery: one firing and one
    resolved line, each a JSON object with exactly the documented keys."""
    rng = np.random.default_rng(3)
    start, warm = 1_800_000_000, 86_400 + 3_600
    counts = np.concatenate([rng.poisson(20, warm), np.zeros(300, int), rng.poisson(20, 900)])
    lines = [f"{start + k},{c}\n" for k, c in enumerate(counts.tolist())]
    (in_tmp / "day.csv").write_text("timestamp,orders.created\n" + "".join(lines))
    result = cli("backtest", "day.csv")
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(a) for a in alerts] == [ALERT_KEYS, ALERT_KEYS]
    firing, resolved = alerts
    assert (firing["metric"], firing["state"], firing["severity"]) == (
        "orders.created", "firing", "page")
    assert start + warm <= firing["at"] <= start + warm + 10
    assert resolved["state"] == "resolved"
    assert start + warm + 300 < resolved["at"] <= start + warm + 300 + 60
    assert firing["score"] <= -3.0
    assert firing["rate"] == 0.0
    assert 18 < firing["baseline"] < 22


def outages_file(path: Path, hours: float, outages: list[tuple[int, float]],
                 bad_line_at: float | None = None) -> int:
    """Write a counts file of ``hours`` of steady traffic of metrics ``m0.count``,
    ``m1.count``, ... (rates 5, 20, 60, ... events/s), each listed metric with a
    five-minute outage from the given hour on, and optionally a malformed line at an
    hour; return the first second."""
    rng = np.random.default_rng(7)
    start, n = 1_800_000_000, int(hours * 3600)
    rates = [5.0, 20.0, 60.0, 12.0, 35.0][: max(k for k, _ in outages) + 1]
    counts = rng.poisson(rates, (n, len(rates)))
    for k, hour in outages:
        at = int(hour * 3600)
        counts[at : at + 300, k] = 0
    rows = [f"{start + j}," + ",".join(map(str, row)) for j, row in enumerate(counts.tolist())]
    if bad_line_at is not None:
        j = int(bad_line_at * 3600)
        rows[j] = f"{start + j}," + ",".join(["x"] * len(rates))
    header = "timestamp," + ",".join(f"m{k}.count" for k in range(len(rates)))
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return start


def test_backtest_prints_the_alerts_before_a_malformed_line_in_a_later_block(
    in_tmp: Path,
) -> None:
    """A malformed line two days in (in the file's third block of rows) still lets the
    outages on the second day be told first; then the line is named, exit 1."""
    start = outages_file(in_tmp / "counts.csv", 49, [(0, 24.5), (1, 25.0)], bad_line_at=48.5)
    result = cli("backtest", "counts.csv")
    assert result.exit_code == 1
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["metric"], a["state"]) for a in alerts] == [
        ("m0.count", "firing"), ("m0.count", "resolved"),
        ("m1.count", "firing"), ("m1.count", "resolved"),
    ]
    assert start + int(24.5 * 3600) <= alerts[0]["at"] <= start + int(24.5 * 3600) + 10
    one_error_line(result.stderr)
    assert f"counts.csv:{int(48.5 * 3600) + 2}: " in result.stderr


BAD_COUNTS = {
    "bad-header": ("time,orders.created\n1800000000,5\n", 1, "header must be"),
    "non-integer-timestamp": ("timestamp,orders.created\n1800000000,5\n18000000x1,6\n", 3,
                              "timestamp must be an integer"),
    "negative-count": ("timestamp,orders.created\n1800000000,5\n1800000001,-6\n", 3,
                       "must be a number >= 0"),
    "not-a-count": ("timestamp,orders.created\n1800000000,5\n1800000001,many\n", 3,
                    "must be a number or empty"),
    "non-consecutive": ("timestamp,orders.created\n1800000000,5\n1800000001,6\n"
                        "1800000003,4\n", 4, "rows must be consecutive seconds"),
    "extra-field": ("timestamp,orders.created\n1800000000,5\n1800000001,6,7\n", 3,
                    "expected 2 fields, got 3"),
    "after-blank-lines": ("timestamp,orders.created\n\n1800000000,5\n\n1800000001,x\n", 5,
                          "must be a number or empty"),
    "bad-metric-name": ("timestamp,Orders\n1800000000,5\n", 1, "invalid event name"),
    "timestamp-too-large": ("timestamp,orders.created\n1800000000,5\n"
                            "99999999999999999999999,6\n", 3, "timestamp must be an integer"),
    "infinite-count": ("timestamp,orders.created\n1800000000,5\n1800000001,1e400\n", 3,
                       "must be a number >= 0"),
    "comment-line": ("timestamp,orders.created\n1800000000,5\n# paused\n", 3,
                     "expected 2 fields, got 1"),
    "first-bad-line-of-any-metric": ("timestamp,a.b,c.d\n1800000000,5,5\n1800000001,5,-1\n"
                                     "1800000002,-2,5\n", 3, "count for 'c.d' must be"),
}


def test_backtest_reads_empty_cells_as_no_data(tmp_path: Path) -> None:
    """Empty cells, in the middle of a row or at its end, and a last line without a
    newline, are no data (NaN); the rest are the counts as written."""
    path = tmp_path / "counts.csv"
    path.write_text("timestamp,a.b,c.d\n1800000000,,2\n1800000001,3,\r\n1800000002,1.5,")
    names, blocks = read_blocks(path)
    [(start, counts)] = list(blocks)
    assert names == ["a.b", "c.d"] and start == 1800000000
    np.testing.assert_array_equal(counts, [[np.nan, 3.0, 1.5], [2.0, np.nan, np.nan]])


@pytest.mark.parametrize("case", sorted(BAD_COUNTS))
def test_backtest_names_file_and_line_of_a_malformed_file(in_tmp: Path, case: str) -> None:
    """A malformed counts file gives one line FILE:LINE: reason and exit 1."""
    text, line, reason = BAD_COUNTS[case]
    (in_tmp / "counts.csv").write_text(text)
    message = assert_fails_with_one_line(cli("backtest", "counts.csv"), f"counts.csv:{line}: ")
    assert reason in message


def test_backtest_of_a_missing_file_is_one_line(in_tmp: Path) -> None:
    """A counts file that does not exist is named in one line, exit 1."""
    assert_fails_with_one_line(cli("backtest", "missing.csv"), "missing.csv: cannot open")


def test_backtest_of_a_malformed_file_in_a_real_process(in_tmp: Path) -> None:
    """The installed command, run as its own process, also prints one line and exits 1."""
    (in_tmp / "counts.csv").write_text(BAD_COUNTS["negative-count"][0])
    done = run_console_script("backtest", "counts.csv", cwd=in_tmp)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [one_error_line(done.stderr)]
    assert done.stderr.startswith("Error: counts.csv:3: ")
