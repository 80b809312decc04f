"""Child processes of the tests that run the real thing: the installed ``cliffwatch``
console script, app processes, and a clean environment for them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from cliffwatch.metrics.store import Store

CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
"""The console script installed next to the Python running the tests."""


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without any ``CLIFFWATCH_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
    env.update(extra)
    return env


class Processes:
    """Child processes of the test: each killed (if still running) and its log kept."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[subprocess.Popen[str], IO[str]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str],
              stdin: int | None = None) -> subprocess.Popen[str]:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed in stop_all)
        proc = subprocess.Popen(args, env=env, stdin=stdin, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        self.running.append((proc, log))
        return proc

    def log(self, name: str) -> str:
        """What process ``name`` printed so far, for failure messages."""
        return (self.logs / f"{name}.log").read_text()[-3000:]

    def stop_all(self) -> None:
        for proc, log in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdin is not None:
                proc.stdin.close()
            log.close()


def stub_rules(metric: str, slack_api_url: str, pagerduty_url: str) -> str:
    """A rules file paging on ``metric`` (the default rule) through Slack and PagerDuty
    stand-ins at these addresses."""
    return (
        f'[[rule]]\nmetric = "{metric}"\n\n'
        f'[slack]\nchannel = "#oncall"\nbase_url = "{slack_api_url}"\n\n'
        f'[pagerduty]\nurl = "{pagerduty_url}"\n'
    )


class Traffic:
    """Writes each second's counts of ``metrics`` just after it closes, as the apps'
    flushers would: Poisson at ``rate``, or zero events for the metrics in ``down``."""

    def __init__(self, store: Store, metrics: Sequence[str], rate: float) -> None:
        self.store = store
        self.metrics = list(metrics)
        self.rate = rate
        self.down: set[str] = set()
        self._stop = threading.Event()
        self._rng = np.random.default_rng(5)
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(1.02 - time.time() % 1.0):
            second = int(time.time()) - 1
            counts = self._rng.poisson(self.rate, len(self.metrics)).tolist()
            down = set(self.down)
            pairs = zip(self.metrics, counts, strict=True)
            self.store.write_counts({second: {m: 0 if m in down else c for m, c in pairs}})


def prefill(store: Store, metrics: Sequence[str], rate: float, minutes: int) -> None:
    """Write ``minutes`` of Poisson history at ``rate`` for ``metrics``, up to now."""
    end = int(time.time())
    width = minutes * 60
    counts = np.random.default_rng(11).poisson(rate, (len(metrics), width)).tolist()
    store.write_counts(
        {end - width + k: {m: counts[i][k] for i, m in enumerate(metrics)} for k in range(width)}
    )
