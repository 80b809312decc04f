"""False pages on pure noise: the detector's calibration, away from any real series.

    .venv/bin/python benchmarks/noise.py [--days 30] [--smoke]

50 synthetic metrics (rates 0.2 to 1,000 events/s, each with burstiness 0, 0.1, 0.2, 0.3
and 0.5: a gamma-distributed multiplier per 10-second block, as real traffic has) and no
incident at all, fed to the detector a block at a time. Every page is false. Prints the
false pages per judged metric-day (the first day is warm-up) and each page's metric.
Goal: at most one false page per 30 metric-days (0.033 per metric-day); exits 1 above it.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from cliffwatch.rules.detector import Detector

RATES = (0.2, 0.5, 1, 2, 5, 10, 20, 50, 200, 1000)
BURSTINESS = (0.0, 0.1, 0.2, 0.3, 0.5)
GOAL = 1 / 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--smoke", action="store_true", help="1.2 days, checks it runs")
    args = parser.parse_args()
    days = 1.2 if args.smoke else args.days
    rng = np.random.default_rng(args.seed)
    rate = np.repeat(np.array(RATES, float), len(BURSTINESS))
    cv = np.tile(np.array(BURSTINESS), len(RATES))
    m, n = len(rate), int(days * 86400)
    det = Detector(m)
    t0 = 1_700_006_400
    pages = []
    started = time.perf_counter()
    for j in range(0, n, 3600):
        shape, scale = 1 / np.maximum(cv, 1e-9) ** 2, np.maximum(cv, 1e-9) ** 2
        burst = np.where(cv[:, None] > 0, rng.gamma(shape[:, None], scale[:, None], (m, 360)), 1.0)
        counts = rng.poisson(rate[:, None] * np.repeat(burst, 10, axis=1)).astype(float)
        pages += [t for t in det.update(counts, t0 + j) if t.state == "firing"]
    judged = m * max(days - 1, 0)
    per_day = len(pages) / judged if judged else 0.0
    print(
        f"{m} metrics x {days:g} days, {judged:.0f} judged metric-days, "
        f"{time.perf_counter() - started:.0f} s"
    )
    for p in pages:
        print(
            f"  false page: {rate[p.index]:g}/s, burstiness {cv[p.index]:g}, "
            f"day {(p.at - t0) / 86400:.2f}, score {p.score:.2f}"
        )
    verdict = "PASS" if per_day <= GOAL else "FAIL"
    print(
        f"{verdict}  {len(pages)} false pages = {per_day:.4f} per metric-day (goal <= {GOAL:.3f})"
    )
    return 0 if args.smoke or per_day <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
