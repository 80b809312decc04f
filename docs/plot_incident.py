"""Plot one real incident as the detector sees it: docs/incident.png.

    .venv/bin/pip install -e '.[plot]'
    .venv/bin/python docs/plot_incident.py [COUNTS.csv.gz TRUTH.json METRIC KIND]

Default: the halving (drop50) of ``orders.created`` in the shared benchmark's ``shop``
scenario (generated into $CLIFFWATCH_BENCH_CACHE or /tmp/cliffwatch-bench if missing).
The detector runs on the whole file up to an hour before the incident, then a second at a
time, recording its score, the normal rate and the rate over the last 10 seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cliffwatch.alerting.backtest import read_blocks
from cliffwatch.rules.detector import Detector

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent.parent / "shared" / "bench"


def _default_files() -> tuple[Path, Path]:
    cache = Path(os.environ.get("CLIFFWATCH_BENCH_CACHE", "/tmp/cliffwatch-bench")) / "shop"
    if not (cache / "truth.json").exists():
        subprocess.run([sys.executable, str(BENCH / "traffic.py"),
                        str(BENCH / "scenarios" / "shop.json"), str(cache)], check=True)
    return cache / "counts.csv.gz", cache / "truth.json"


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(argv) == 5:
        counts_path, truth_path, metric, kind = Path(argv[1]), Path(argv[2]), argv[3], argv[4]
    else:
        (counts_path, truth_path), metric, kind = _default_files(), "orders.created", "drop50"
    truth = json.loads(truth_path.read_text())
    event = next(e for e in truth["events"] if e["metric"] == metric and e["kind"] == kind)
    names, blocks = read_blocks(counts_path)
    col = names.index(metric)
    series = np.concatenate([b[col] for _, b in blocks])
    t0 = truth["start"]
    lead, tail = 3600, (event["end"] - event["start"]) + 1800
    start = event["start"] - t0
    det = Detector(1)
    det.update(series[None, : start - lead], t0)
    rows = []
    alerts = []
    for k in range(start - lead, min(start + tail, len(series))):
        for t in det.update(series[None, k : k + 1], t0 + k):
            alerts.append((t.at - event["start"], t.state))
        rows.append((k - start, det.recent_rate(10)[0], det.baseline[0], det.score[0]))
    x, rate, base, score = (np.array(c) for c in zip(*rows, strict=True))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=[3, 2])
    top.plot(x / 60, rate, lw=0.8, color="#555", label="events/s (last 10 s)")
    top.plot(x / 60, base, lw=1.5, color="#1f77b4", label="normal rate (baseline)")
    top.axvspan(0, (event["end"] - event["start"]) / 60, color="#fdd", label=f"injected {kind}")
    top.set_ylabel("events per second")
    top.set_title(f"{metric}: {kind} in the benchmark's shop scenario, as cliffwatch sees it")
    bottom.plot(x / 60, score, lw=0.8, color="#d62728", label="score")
    bottom.axhline(-3, color="k", ls="--", lw=1, label="threshold -3")
    bottom.set_ylim(-8, 3)
    bottom.set_ylabel("score (noise units)")
    bottom.set_xlabel("minutes from the start of the incident")
    for at, state in alerts:
        for ax in (top, bottom):
            ax.axvline(at / 60, color="red" if state == "firing" else "green", lw=1.5)
        top.annotate(state, (at / 60, top.get_ylim()[1] * 0.92), color="red"
                     if state == "firing" else "green", ha="left")
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = HERE / "incident.png"
    fig.savefig(out, dpi=110)
    print(f"{out}: alerts {alerts}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
