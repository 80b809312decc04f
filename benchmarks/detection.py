#!/usr/bin/env python3
"""Drop-detection benchmark: ``cliffwatch backtest`` on every traffic scenario, scored.

    python benchmarks/detection.py [--only NAME ...] [--smoke] [--reseed K] [--markdown] [-v]
                                   [--against CACHE]

Scenarios come from the shared traffic benchmark (``<bench>/scenarios/*.json``, the
public ones) and from ``benchmarks/scenarios/*.json`` (ours, on other real series,
rates and burstiness). Each is generated once with ``<bench>/traffic.py`` into
``$CLIFFWATCH_BENCH_CACHE`` (default ``/tmp/cliffwatch-bench``), and generated again
only when the scenario file or ``traffic.py`` is newer than its ``truth.json``. Then
the ``cliffwatch`` console script installed next to this Python replays the counts
(``cliffwatch backtest COUNTS.csv.gz``, timed), ``<bench>/score.py --json`` scores the
alerts, and one table shows every scenario, followed by the goals and a PASS or FAIL
for each scenario.

``<bench>`` is ``--bench-dir``, else ``$CLIFFWATCH_BENCH_DIR``, else ``shared/bench``
beside the repository's checkout.

``--smoke`` runs a cut-down copy of one scenario (1.5 days, the first 24 hours
without events; ``shop`` unless ``--only`` names another) to show that the pipeline
runs; it checks no goals. ``--reseed K`` runs every scenario with its seed K higher:
the same recipe (series, rates, burstiness, events) with traffic and incidents never
seen, to check that a change does not just fit the usual seeds. ``--markdown`` also
prints the table as Markdown. ``--against CACHE`` compares each must-page incident's
first page with the one in the alerts another run left in CACHE (its
``$CLIFFWATCH_BENCH_CACHE``, e.g. a run of the code before a change): which incidents
paged earlier or later, were found or lost, and how many paged at the same second.

Exit status: 0 when every scenario meets every goal (or the smoke run ran), 1 when
a scenario misses a goal or a step fails, 2 for bad arguments or a missing tool.
Uses the standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
OUR_SCENARIOS = HERE / "scenarios"
DEFAULT_CACHE = "/tmp/cliffwatch-bench"
SMOKE_SCENARIO = "shop"
SMOKE_DAYS = 1.5
SMOKE_WARMUP_HOURS = 24

RECALL_MIN = 0.95
FALSE_PER_METRIC_DAY_MAX = 0.033  # about one false page a month per metric
DELAY_VS_LIMIT_MAX = 3.0
TIMED_SCENARIO = "shop"
TIMED_SECONDS_MAX = 20.0
LATE_S = 60  # as score.py: a page up to this long after an incident's end detects it


class BenchError(Exception):
    """A step of the benchmark could not run; the message says which and why."""


@dataclass
class Scenario:
    """A scenario file and the name its results are cached and reported under."""

    name: str
    path: Path


@dataclass
class Result:
    """What one scenario scored, or the error that stopped it."""

    name: str
    score: dict[str, object] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None

    def get(self, key: str) -> float | None:
        value = self.score.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def metric_days(self) -> float | None:
        return self.get("metric_days")

    @property
    def false_pages(self) -> int:
        return int((self.get("false_pages_noise") or 0) + (self.get("false_pages_hazard") or 0))

    @property
    def metric_seconds_per_second(self) -> float | None:
        if self.metric_days is None or not self.seconds:
            return None
        return self.metric_days * 86400 / self.seconds


Check = Callable[[Result], str | None]


def _recall(r: Result) -> str | None:
    recall = r.get("recall")
    if recall is not None and recall < RECALL_MIN:
        return f"recall {recall:.3f} < {RECALL_MIN}"
    return None


def _false(r: Result) -> str | None:
    rate = r.get("false_pages_per_metric_day")
    if rate is not None and rate > FALSE_PER_METRIC_DAY_MAX:
        return f"{r.false_pages} false pages = {rate:.4f}/metric-day > {FALSE_PER_METRIC_DAY_MAX}"
    return None


def _duplicates(r: Result) -> str | None:
    dup = int(r.get("duplicate_pages") or 0)
    return f"{dup} duplicate pages" if dup else None


def _resolves(r: Result) -> str | None:
    detected, resolved = int(r.get("detected") or 0), int(r.get("resolved") or 0)
    return f"{resolved} resolves for {detected} detected" if resolved < detected else None


def _delay(r: Result) -> str | None:
    ratio = r.get("delay_vs_limit_median")
    if ratio is not None and ratio > DELAY_VS_LIMIT_MAX:
        return f"delay-vs-limit median {ratio:.2f} > {DELAY_VS_LIMIT_MAX:g}"
    return None


def _speed(r: Result) -> str | None:
    if r.name == TIMED_SCENARIO and r.seconds is not None and r.seconds >= TIMED_SECONDS_MAX:
        return f"backtest {r.seconds:.1f} s >= {TIMED_SECONDS_MAX:g} s"
    return None


GOALS: tuple[tuple[str, Check], ...] = (
    (f"recall >= {RECALL_MIN}", _recall),
    (f"false pages <= {FALSE_PER_METRIC_DAY_MAX}/metric-day", _false),
    ("0 duplicate pages", _duplicates),
    ("a resolve per detected incident", _resolves),
    (f"delay-vs-limit median <= {DELAY_VS_LIMIT_MAX:g}", _delay),
    (f"{TIMED_SCENARIO} backtest < {TIMED_SECONDS_MAX:g} s", _speed),
)


def failures(result: Result) -> list[str]:
    """The goals ``result`` misses, each as a short reason (empty: it meets them all)."""
    if result.error:
        return [result.error]
    return [reason for _, check in GOALS if (reason := check(result))]


# -- locating things --------------------------------------------------------------


def bench_dir(explicit: str | None) -> Path:
    """The shared traffic benchmark's folder; raises BenchError if it is missing."""
    candidates = (
        [explicit]
        if explicit
        else [os.environ.get("CLIFFWATCH_BENCH_DIR"), str(HERE.parent.parent / "shared" / "bench")]
    )
    for c in candidates:
        if c and (Path(c) / "traffic.py").is_file() and (Path(c) / "score.py").is_file():
            return Path(c).resolve()
    raise BenchError(
        "no traffic benchmark (traffic.py, score.py) found in "
        + ", ".join(str(c) for c in candidates if c)
        + "; pass --bench-dir or set CLIFFWATCH_BENCH_DIR"
    )


def cliffwatch_cli() -> Path:
    """The ``cliffwatch`` console script installed next to this Python."""
    here = Path(sys.executable).parent / "cliffwatch"
    if here.is_file():
        return here
    found = shutil.which("cliffwatch")
    if found:
        return Path(found)
    raise BenchError(
        f"no cliffwatch console script next to {sys.executable}: install the package first"
    )


def discover(bench: Path) -> list[Scenario]:
    """Every public and every one of our scenarios, public first, sorted by name."""
    out: list[Scenario] = []
    seen: dict[str, Path] = {}
    for folder in (bench / "scenarios", OUR_SCENARIOS):
        for path in sorted(folder.glob("*.json")):
            name = path.stem
            if name in seen:
                raise BenchError(f"scenario {name!r} is both {seen[name]} and {path}")
            seen[name] = path
            out.append(Scenario(name, path))
    return out


def variant(
    source: Scenario, cache: Path, name: str, reseed: int = 0, **changes: object
) -> Scenario:
    """A copy of ``source`` named ``name``, its seed ``reseed`` higher and ``changes``
    made to its fields, written to the cache only when its content changes, so that
    the cached traffic is reused across runs."""
    try:
        sc = json.loads(source.path.read_text())
        sc.update(name=name, seed=int(sc.get("seed", 0)) + reseed, **changes)
    except (OSError, ValueError, TypeError) as exc:
        raise BenchError(f"{source.path}: cannot read scenario: {exc}") from None
    sc["data_dirs"] = [str((source.path.parent / d).resolve()) for d in sc.get("data_dirs", [])]
    path = cache / "variants" / f"{name}.json"
    text = json.dumps(sc, indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return Scenario(name, path)


# -- running ----------------------------------------------------------------------


def _run(
    cmd: Sequence[str | Path], what: str, stdout: int | IO[str] = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise BenchError naming ``what`` with the end of its stderr if it fails."""
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], stdout=stdout, stderr=subprocess.PIPE, text=True
        )
    except OSError as exc:
        raise BenchError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
        raise BenchError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


def generate(bench: Path, scenario: Scenario, out: Path) -> bool:
    """Generate ``scenario`` into ``out`` unless its truth.json is newer than both the
    scenario file and traffic.py; True if it was generated."""
    traffic = bench / "traffic.py"
    truth = out / "truth.json"
    if truth.is_file():
        t = truth.stat().st_mtime
        if t >= scenario.path.stat().st_mtime and t >= traffic.stat().st_mtime:
            return False
    _run([sys.executable, traffic, scenario.path, out], f"{scenario.name}: traffic.py")
    return True


def run_scenario(bench: Path, cli: Path, scenario: Scenario, cache: Path) -> Result:
    """Generate (if needed), backtest (timed) and score one scenario; a failing step
    becomes the result's error instead of an exception."""
    out = cache / scenario.name
    try:
        t0 = time.perf_counter()
        if generate(bench, scenario, out):
            _log(f"{scenario.name}: generated in {time.perf_counter() - t0:.1f} s")
        alerts = out / "alerts.jsonl"
        with open(alerts, "w") as f:
            t0 = time.perf_counter()
            _run(
                [cli, "backtest", out / "counts.csv.gz"],
                f"{scenario.name}: cliffwatch backtest",
                stdout=f,
            )
            seconds = time.perf_counter() - t0
        proc = _run(
            [sys.executable, bench / "score.py", out / "truth.json", alerts, "--json"],
            f"{scenario.name}: score.py",
        )
        score = json.loads(proc.stdout)
    except (BenchError, OSError, ValueError) as exc:
        return Result(scenario.name, error=str(exc))
    _log(f"{scenario.name}: backtest {seconds:.1f} s")
    return Result(scenario.name, score, seconds)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- reporting --------------------------------------------------------------------

HEADER = (
    "scenario",
    "metric-days",
    "incidents",
    "recall",
    "false/metric-day",
    "dup",
    "resolved/detected",
    "delay med s",
    "delay p95 s",
    "vs limit med",
    "backtest s",
    "metric-s/s",
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(r: Result) -> list[str]:
    """The table cells of one result."""
    if r.error:
        return [r.name, "error"] + [""] * (len(HEADER) - 2)
    return [
        r.name,
        _fmt(r.metric_days, ".1f"),
        _fmt(r.get("incidents"), ".0f"),
        _fmt(r.get("recall"), ".3f"),
        f"{_fmt(r.get('false_pages_per_metric_day'), '.4f')} ({r.false_pages})",
        _fmt(r.get("duplicate_pages"), ".0f"),
        f"{_fmt(r.get('resolved'), '.0f')}/{_fmt(r.get('detected'), '.0f')}",
        _fmt(r.get("delay_median_s"), ".0f"),
        _fmt(r.get("delay_p95_s"), ".0f"),
        _fmt(r.get("delay_vs_limit_median"), ".2f"),
        _fmt(r.seconds, ".1f"),
        _fmt(r.metric_seconds_per_second, ",.0f"),
    ]


def text_table(rows: list[list[str]], header: Sequence[str] = HEADER) -> str:
    """Rows as a plain aligned table: names left, numbers right."""
    table = [list(header)] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for r in table:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]], header: Sequence[str]) -> str:
    """Rows as a Markdown table."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def details(r: Result) -> str:
    """Per-kind results and examples of false pages, for ``-v``."""
    lines = [f"{r.name}:"]
    by_kind = r.score.get("by_kind")
    if isinstance(by_kind, dict):
        for kind, k in by_kind.items():
            lines.append(
                f"  {kind:12s} {k.get('detected')}/{k.get('incidents')} detected, "
                f"delay median {_fmt(k.get('delay_median_s'), '.0f')} s, "
                f"vs limit {_fmt(k.get('delay_vs_limit_median'), '.2f')}"
            )
    for key in ("hazard_examples", "noise_examples"):
        examples = r.score.get(key)
        for ex in examples if isinstance(examples, list) else []:
            lines.append(f"  false page ({key.split('_')[0]}): {json.dumps(ex)}")
    return "\n".join(lines)


def first_pages(events: list[dict[str, Any]], alerts: Path) -> dict[tuple[str, int], int]:
    """Each must-page incident's first page among ``alerts`` (alerts.jsonl), as score.py
    counts a detection: the first page of its metric from its start to LATE_S after its
    end. Keyed by (metric, start); missed ones left out."""
    pages: dict[str, list[int]] = {}
    with open(alerts) as f:
        for line in f:
            a = json.loads(line) if line.strip() else {}
            if a.get("state") == "firing" and a.get("severity", "page") == "page":
                pages.setdefault(a["metric"], []).append(int(a["at"]))
    found = {}
    for ev in events:
        if ev.get("must_page"):
            last = ev["end"] + LATE_S
            hits = [t for t in pages.get(ev["metric"], []) if ev["start"] <= t <= last]
            if hits:
                found[(ev["metric"], ev["start"])] = min(hits)
    return found


def compare(results: list[Result], cache: Path, against: Path) -> None:
    """Print, incident by incident, how this run's first pages differ from those of
    the run left in ``against`` (the same scenarios), and the totals."""
    print()
    print(f"first pages of must-page incidents, against the run in {against}:")
    moved: list[int] = []
    same = found = lost = 0
    for r in results:
        if r.error:
            continue
        try:
            events = json.loads((cache / r.name / "truth.json").read_text())["events"]
            now = first_pages(events, cache / r.name / "alerts.jsonl")
            then = first_pages(events, against / r.name / "alerts.jsonl")
        except (OSError, ValueError, KeyError) as exc:
            print(f"  {r.name}: cannot compare: {exc}")
            continue
        for ev in events:
            if not ev.get("must_page"):
                continue
            key = (ev["metric"], ev["start"])
            a, b = then.get(key), now.get(key)
            if a == b:  # the same second, or missed by both
                same += a is not None
                continue
            found += a is None
            lost += b is None
            if a is not None and b is not None:
                moved.append(b - a)
            was = "missed" if a is None else f"{a - ev['start']} s"
            is_ = "missed" if b is None else f"{b - ev['start']} s"
            print(f"  {r.name:16s} {ev['metric']:20s} {ev['kind']:8s} at {ev['start']}: "
                  f"{was} -> {is_} (limit {ev['cusum_limit_s']:.0f} s)")
    earlier = [-d for d in moved if d < 0]
    later = [d for d in moved if d > 0]
    print(f"  {len(earlier)} paged earlier{_by(earlier)}, {len(later)} later{_by(later)}, "
          f"{same} at the same second, {found} found that were missed, {lost} lost")


def _by(seconds: list[int]) -> str:
    return f" (by {min(seconds)}-{max(seconds)} s)" if seconds else ""


def report(results: list[Result], *, goals: bool, markdown: bool, verbose: bool) -> int:
    """Print the table (and goals, verdicts, Markdown, details as asked); the exit status."""
    rows = [row(r) for r in results]
    print(text_table(rows))
    verdicts = {r.name: failures(r) for r in results}
    errors = any(r.error for r in results)
    if goals:
        print()
        print("goals: " + "; ".join(name for name, _ in GOALS))
        width = max(len(r.name) for r in results)
        for r in results:
            why = verdicts[r.name]
            print(f"  {r.name:{width}s}  {'FAIL  ' + '; '.join(why) if why else 'PASS'}")
    else:
        for r in results:
            if r.error:
                print(f"  {r.name}: {r.error}")
    if markdown:
        print()
        header: Sequence[str] = HEADER
        md_rows = rows
        if goals:
            header = (*HEADER, "verdict")
            md_rows = [
                r + ["FAIL" if verdicts[n.name] else "PASS"]
                for r, n in zip(rows, results, strict=True)
            ]
        print(markdown_table(md_rows, header))
    if verbose:
        for r in results:
            if not r.error:
                print()
                print(details(r))
    if errors:
        return 1
    return 1 if goals and any(verdicts.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Judge cliffwatch's drop detection on the traffic scenarios."
    )
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these scenarios")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"run a {SMOKE_DAYS:g}-day cut-down of one scenario; check no goals",
    )
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="per-kind results and false-page examples"
    )
    ap.add_argument(
        "--bench-dir", help="the shared traffic benchmark (traffic.py, score.py, scenarios/)"
    )
    ap.add_argument(
        "--reseed",
        type=int,
        default=0,
        metavar="K",
        help="run each scenario with its seed + K: the same recipe, traffic never seen",
    )
    ap.add_argument(
        "--against",
        metavar="CACHE",
        help="compare each incident's first page with another run's (its cache folder)",
    )
    args = ap.parse_args(argv)
    try:
        bench = bench_dir(args.bench_dir)
        cli = cliffwatch_cli()
        scenarios = discover(bench)
        cache = Path(os.environ.get("CLIFFWATCH_BENCH_CACHE") or DEFAULT_CACHE)
        by_name = {s.name: s for s in scenarios}
        if args.only:
            unknown = [n for n in args.only if n not in by_name]
            if unknown:
                raise BenchError(
                    f"unknown scenario {', '.join(unknown)}; known: {', '.join(by_name)}"
                )
            scenarios = [by_name[n] for n in args.only]
        if args.smoke:
            source = scenarios[0] if args.only else by_name.get(SMOKE_SCENARIO, scenarios[0])
            smoke = variant(
                source, cache, f"{source.name}-smoke",
                days=SMOKE_DAYS, warmup_hours=SMOKE_WARMUP_HOURS,
            )
            scenarios = [smoke]
        if args.reseed:
            scenarios = [
                variant(s, cache, f"{s.name}+{args.reseed}", reseed=args.reseed) for s in scenarios
            ]
    except BenchError as exc:
        print(f"detection.py: {exc}", file=sys.stderr)
        return 2
    results = [run_scenario(bench, cli, s, cache) for s in scenarios]
    status = report(results, goals=not args.smoke, markdown=args.markdown, verbose=args.verbose)
    if args.against:
        compare(results, cache, Path(args.against))
    return status


if __name__ == "__main__":
    sys.exit(main())
