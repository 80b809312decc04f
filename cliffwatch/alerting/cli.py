"""The ``cliffwatch`` command line.

Every error cliffwatch raises on purpose becomes one line on stderr and exit status 1
(2 for a usage error, as click does); nothing prints a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from ..errors import CliffwatchError
from ..metrics.store import Store, mask_url
from ..rules.config import RuleSet, default_rules, load_rules
from ..rules.detector import WARMUP_MINUTES

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

redis_url_option = click.option(
    "--redis-url",
    envvar="CLIFFWATCH_REDIS_URL",
    default=DEFAULT_REDIS_URL,
    show_default=True,
    show_envvar=True,
    help="Redis the apps flush their counts to: redis://, rediss:// (TLS; a private CA "
    "as ?ssl_ca_certs=/path/ca.pem), unix://; an ACL user as user:password@host.",
)
prefix_option = click.option(
    "--prefix",
    envvar="CLIFFWATCH_PREFIX",
    default="cliffwatch:",
    show_default=True,
    show_envvar=True,
    help="Prefix of every cliffwatch key in Redis.",
)


def _one_line_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliffwatchError as exc:
            raise click.ClickException(
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ) from None
        except BrokenPipeError:  # `cliffwatch backtest ... | head`
            sys.stderr.close()
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="cliffwatch")
def main(verbose: int) -> None:
    """Pages a team when a critical business metric falls off a cliff, and only then."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--rules",
    "rules_path",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="CLIFFWATCH_RULES",
    show_envvar=True,
    help="The rules file (TOML).",
)
@redis_url_option
@prefix_option
@click.option(
    "--warmup",
    type=click.IntRange(min=1),
    default=WARMUP_MINUTES,
    show_default=True,
    help="Minutes of data a metric needs before it is judged (a day learns its daily cycle).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    envvar="CLIFFWATCH_METRICS_PORT",
    show_envvar=True,
    help="Serve the worker's own health as Prometheus /metrics on this port "
    "(needs the cliffwatch[metrics] extra).",
)
@_one_line_errors
def worker(
    rules_path: str, redis_url: str, prefix: str, warmup: int, metrics_port: int | None
) -> None:
    """Run the detector worker until SIGTERM or SIGINT.

    The first signal finishes the current tick and stops; a second exits at once.
    SIGHUP reads the rules file again: a broken file keeps the rules in force (the log
    says why); [slack] and [pagerduty] changes take effect on restart.
    """
    from .selfmetrics import WorkerMetrics
    from .worker import Worker

    monitor = WorkerMetrics() if metrics_port is not None else None  # fails early if missing
    rules = load_rules(rules_path)
    for warning in rules.warnings:
        click.echo(f"warning: {warning}", err=True)
    store = Store.from_url(redis_url, prefix=prefix)
    w = Worker(store, rules, warmup_minutes=warmup, monitor=monitor)
    click.echo(
        f"cliffwatch worker: {len(rules.rules)} rules, Redis at {mask_url(redis_url)}", err=True
    )
    if monitor is not None and metrics_port is not None:
        port = monitor.serve(metrics_port)
        click.echo(f"cliffwatch worker: /metrics on port {port}", err=True)
    try:
        w.run()
    finally:
        if monitor is not None:
            monitor.close()


@main.command()
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(dir_okay=False),
    help="Rules file; without it every column is a critical metric under the "
    "default rule (page at score -3).",
)
@click.argument("counts", type=click.Path(dir_okay=False))
@_one_line_errors
def backtest(rules_path: str | None, counts: str) -> None:
    """Replay a counts file (COUNTS.csv or .csv.gz) through the detector.

    The file has a header `timestamp,<metric>,...` and one row a second; an empty cell
    is no data. Prints one JSON object a line for every alert transition.
    """
    from .backtest import backtest as run_backtest

    rules: RuleSet = load_rules(rules_path) if rules_path else default_rules()
    out = sys.stdout
    for alert in run_backtest(counts, rules):
        out.write(json.dumps(alert) + "\n")
    out.flush()


@main.group()
def rules() -> None:
    """Work with rules files."""


@rules.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@_one_line_errors
def rules_check(path: str) -> None:
    """Validate a rules file; name the file, line and key of any problem."""
    rs = load_rules(path)
    for warning in rs.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{path}: ok, {len(rs.rules)} rule{'s' if len(rs.rules) != 1 else ''}")


@main.command()
@click.option(
    "--speed",
    type=click.FloatRange(min=0.1, max=100.0),
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second.",
)
@click.option(
    "--seconds",
    type=click.IntRange(min=60),
    default=90,
    show_default=True,
    help="Length of the live part of the demo, in simulated seconds.",
)
@_one_line_errors
def demo(speed: float, seconds: int) -> None:
    """A simulated shop, instrumented with @event, watched live: an outage pages within
    seconds and resolves after recovery.

    Runs on an embedded store unless CLIFFWATCH_REDIS_URL is set; posts to Slack and
    PagerDuty only when their settings are in the environment.
    """
    from .demo import run_demo

    raise SystemExit(run_demo(speed=speed, seconds=seconds))


@main.command()
@redis_url_option
@prefix_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@click.option(
    "--watch", is_flag=True, help="Refresh every second until Ctrl-C (with --json: a line each)."
)
@_one_line_errors
def status(redis_url: str, prefix: str, as_json: bool, watch: bool) -> None:
    """Show every metric Redis knows: state, rate now, normal rate, score, the last 10
    minutes, open incident; and the apps flushing and the active silences."""
    from .status import collect, render
    from .status import watch as watch_loop

    store = Store.from_url(redis_url, prefix=prefix)
    store.ping()
    source = f"Redis at {mask_url(redis_url)} prefix {prefix!r}"

    def draw() -> str:
        overview = collect(store)
        if as_json:
            return json.dumps(overview.to_json(), ensure_ascii=False)
        return render(overview, source)

    if not watch:
        click.echo(draw())
        return

    def draw_or_error() -> str:
        try:
            return draw()
        except CliffwatchError as exc:  # Redis away for a moment: say so, keep watching
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return json.dumps({"error": line}) if as_json else f"error: {line}"

    try:
        watch_loop(draw_or_error, sys.stdout, clear="" if as_json else "\x1b[H\x1b[2J")
    except KeyboardInterrupt:
        click.echo("")


@main.group()
def silence() -> None:
    """Maintenance windows: incidents that start inside one are recorded, not paged."""


@silence.command("add")
@click.argument("metric")
@click.option(
    "--for",
    "duration",
    required=True,
    metavar="DURATION",
    help="How long, from now: 30m, 2h, 1d, 1h30m (at most 30d).",
)
@click.option("--reason", required=True, help="Why, for whoever reads `silence list`.")
@redis_url_option
@prefix_option
@_one_line_errors
def silence_add(metric: str, duration: str, reason: str, redis_url: str, prefix: str) -> None:
    """Silence METRIC (a name, or a glob like 'payments.*') from now on, for a while."""
    from .silences import Silences, check_pattern, iso, parse_duration

    seconds = parse_duration(duration)
    check_pattern(metric)
    if not reason.strip():
        raise click.ClickException("--reason must say why (it is shown in `silence list`)")
    who = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    s = Silences(Store.from_url(redis_url, prefix=prefix)).add(metric, seconds, reason, who)
    click.echo(f"{s.id}  {s.pattern} silenced until {iso(s.ends_at)}")


@silence.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@redis_url_option
@prefix_option
@_one_line_errors
def silence_list(as_json: bool, redis_url: str, prefix: str) -> None:
    """List the active silences, soonest end first."""
    import time

    from .silences import Silences, human_duration, iso

    now = int(time.time())
    silences = Silences(Store.from_url(redis_url, prefix=prefix), clock=lambda: now).current()
    if as_json:
        rows = [
            {**s.to_json(), "ends_at_iso": iso(s.ends_at), "remaining_s": s.ends_at - now}
            for s in silences
        ]
        click.echo(json.dumps({"silences": rows}, ensure_ascii=False))
        return
    if not silences:
        click.echo("no active silences")
        return
    width = max(6, *(len(s.pattern) for s in silences))
    click.echo(
        f"{'id':<8}  {'metric':<{width}}  {'until (UTC)':<20}  {'left':>6}  {'who':<10}  reason"
    )
    for s in silences:
        click.echo(
            f"{s.id:<8}  {s.pattern:<{width}}  {iso(s.ends_at):<20}  "
            f"{human_duration(s.ends_at - now):>6}  {s.created_by:<10}  {s.reason}"
        )


@silence.command("remove")
@click.argument("silence_id", metavar="ID")
@redis_url_option
@prefix_option
@_one_line_errors
def silence_remove(silence_id: str, redis_url: str, prefix: str) -> None:
    """End the silence ID now (ids are in `cliffwatch silence list`)."""
    from .silences import Silences

    Silences(Store.from_url(redis_url, prefix=prefix)).remove(silence_id)
    click.echo(f"{silence_id} removed")
