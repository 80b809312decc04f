"""The ``cliffwatch`` command line.

Every error cliffwatch raises on purpose becomes one line on stderr and exit status 1
(2 for a usage error, as click does); nothing prints a traceback.
"""

from __future__ import annotations

import json
import logging
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
    help="Redis the apps flush their counts to.",
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
@_one_line_errors
def worker(rules_path: str, redis_url: str, prefix: str, warmup: int) -> None:
    """Run the detector worker until SIGTERM or SIGINT.

    The first signal finishes the current tick and stops; a second exits at once.
    """
    from .worker import Worker

    rules = load_rules(rules_path)
    for warning in rules.warnings:
        click.echo(f"warning: {warning}", err=True)
    store = Store.from_url(redis_url, prefix=prefix)
    w = Worker(store, rules, warmup_minutes=warmup)
    click.echo(
        f"cliffwatch worker: {len(rules.rules)} rules, Redis at {mask_url(redis_url)}", err=True
    )
    w.run()


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
@_one_line_errors
def status(redis_url: str, prefix: str, as_json: bool) -> None:
    """Show every watched metric: state, rate now, normal rate, score."""
    store = Store.from_url(redis_url, prefix=prefix)
    store.ping()
    rows = []
    for name in store.metric_names():
        st = store.get_state(name)
        rows.append(
            {
                "metric": name,
                "status": st.get("status", "not watched"),
                "rate": st.get("now_rate", ""),
                "baseline": st.get("now_baseline", ""),
                "score": st.get("now_score", ""),
                "incident": st.get("incident_id", "") if st.get("state") == "firing" else "",
            }
        )
    if as_json:
        click.echo(json.dumps({"metrics": rows}))
        return
    if not rows:
        click.echo("no metrics yet: no app has flushed to this Redis")
        return
    width = max(len(r["metric"]) for r in rows)
    click.echo(f"{'metric':<{width}}  {'status':<11} {'rate/s':>9} {'normal/s':>9} {'score':>7}")
    for r in rows:
        click.echo(
            f"{r['metric']:<{width}}  {r['status']:<11} {r['rate']:>9} "
            f"{r['baseline']:>9} {r['score']:>7}"
        )
