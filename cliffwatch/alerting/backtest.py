"""``cliffwatch backtest``: the detector on recorded counts, in simulated time.

The counts file is a wide CSV (optionally gzipped): a header ``timestamp,<metric>,...``
and one row a second with integer epoch seconds; an empty cell is *no data*.
The same :class:`~cliffwatch.rules.detector.Detector` the worker runs judges it, a
block of rows at a time, and every alert transition comes out as one JSON object.
"""

from __future__ import annotations

import gzip
import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import DataError
from ..metrics.bus import validate_name
from ..rules.config import RuleSet
from ..rules.detector import Detector

BLOCK_ROWS = 86_400
_EMPTY_CELL = re.compile(r",(?=[,\r\n]|$)")  # a cell with nothing in it: no data


def _open(path: Path) -> IO[str]:
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror or exc}") from None


def read_blocks(
    path: str | Path, rows: int = BLOCK_ROWS
) -> tuple[list[str], Iterator[tuple[int, np.ndarray]]]:
    """The metric names of a counts file, and its blocks as ``(first second, counts)``
    with counts shaped ``(metrics, seconds)`` and ``NaN`` for no data.

    Raises :class:`DataError` naming the file and line for anything malformed.
    """
    path = Path(path)
    f = _open(path)
    try:
        header = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        f.close()
        raise DataError(f"{path}: cannot read: {exc}") from None
    cols = header.strip().split(",")
    if len(cols) < 2 or cols[0].strip() != "timestamp":
        f.close()
        raise DataError(
            f"{path}:1: header must be 'timestamp,<metric>,...', got {header.strip()[:80]!r}"
        )
    names = [c.strip() for c in cols[1:]]
    for name in names:
        try:
            validate_name(name)
        except ValueError as exc:
            f.close()
            raise DataError(f"{path}:1: {exc}") from None
    if len(set(names)) != len(names):
        f.close()
        raise DataError(f"{path}:1: a metric appears twice in the header")
    return names, _blocks(path, f, names, rows)


def _blocks(
    path: Path, f: IO[str], names: list[str], rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    width = len(names)
    line_no = 1
    expect: int | None = None
    with f:
        while True:
            try:
                read = list(itertools.islice(f, rows))
            except (OSError, EOFError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: cannot read after line {line_no}: {exc}") from None
            # blank lines are skipped, but messages name each row's line in the file
            numbers = [line_no + k + 1 for k, ln in enumerate(read) if ln.strip()]
            lines = [ln for ln in read if ln.strip()]
            line_no += len(read)
            if not lines:
                return
            parsed = _parse(lines, width)
            ts, vals = parsed if parsed else _parse_or_explain(path, lines, numbers, names)
            wrong = ~np.isnan(vals) & ~((vals >= 0) & (vals < np.inf))
            if wrong.any():
                r, c = (int(v) for v in np.argwhere(wrong.T)[0])  # the first line's
                cell = lines[r].rstrip("\r\n").split(",")[c + 1]
                raise DataError(
                    f"{path}:{numbers[r]}: count for {names[c]!r} must be "
                    f"a number >= 0 or empty, got {cell!r}"
                )
            step = np.diff(ts)
            if expect is not None and ts[0] != expect or (step != 1).any():
                k = (
                    0
                    if expect is not None and ts[0] != expect
                    else int(np.flatnonzero(step != 1)[0]) + 1
                )
                raise DataError(
                    f"{path}:{numbers[k]}: rows must be consecutive seconds, "
                    f"got {ts[k]} after {ts[k - 1] if k or expect is None else expect - 1}"
                )
            expect = int(ts[-1]) + 1
            yield int(ts[0]), vals


def _parse(lines: list[str], width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Timestamps and counts (``(metrics, seconds)``, NaN for no data) of well-formed
    rows, parsed in C; ``None`` for anything else, which :func:`_parse_or_explain`
    parses again to say what is wrong and where."""
    text = _EMPTY_CELL.sub(",nan", "".join(lines))
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", comments=None, ndmin=2)
        # the timestamps again, as integers: as floats, 1e9 or 1.0 would pass
        ts = np.array([ln[: ln.index(",")] for ln in lines]).astype(np.int64)
    except (ValueError, OverflowError):
        return None
    if table.shape != (len(lines), width + 1):
        return None
    return ts, table[:, 1:].T.copy()


def _parse_or_explain(
    path: Path, lines: list[str], numbers: list[int], names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_parse`, a cell at a time: raises :class:`DataError` naming the line
    and the metric of the first malformed row or cell."""
    width = len(names)
    table = (
        np.array([ln.rstrip("\r\n").split(",") for ln in lines], dtype=object)
        if len({ln.count(",") for ln in lines}) == 1
        else None
    )
    if table is None or table.shape[1] != width + 1:
        for k, ln in enumerate(lines):
            if ln.count(",") != width:
                raise DataError(
                    f"{path}:{numbers[k]}: expected {width + 1} fields, got {ln.count(',') + 1}"
                )
    assert table is not None
    try:
        ts = table[:, 0].astype(np.int64)
    except (ValueError, OverflowError):
        bad = _first_bad(table[:, 0], np.int64)
        raise DataError(
            f"{path}:{numbers[bad]}: timestamp must be an integer epoch "
            f"second, got {table[bad, 0]!r}"
        ) from None
    cells = table[:, 1:]
    cells[cells == ""] = "nan"
    try:
        vals = cells.astype(np.float64)
    except ValueError:
        flat = _first_bad(cells.ravel(), float)
        r, c = divmod(flat, width)
        raise DataError(
            f"{path}:{numbers[r]}: count for {names[c]!r} must be a "
            f"number or empty, got {cells[r, c]!r}"
        ) from None
    return ts, vals.T.copy()


def _first_bad(values: np.ndarray, kind: type) -> int:
    for k, v in enumerate(values):
        try:
            kind(v)
        except (ValueError, OverflowError):
            return k
    return 0


def backtest(path: str | Path, rules: RuleSet) -> Iterator[dict[str, object]]:
    """Run the detector over a counts file; yield one alert transition at a time as a dict
    ``{"metric", "state", "at", "severity", "score", "rate", "baseline"}``.

    Columns no rule matches are skipped. Raises :class:`DataError` for a malformed file.
    """
    names, blocks = read_blocks(path)
    picked = [(k, name, rule) for k, name in enumerate(names) if (rule := rules.match(name))]
    cols = np.array([k for k, _, _ in picked], dtype=np.intp)
    det = Detector(
        len(picked), [r.threshold for _, _, r in picked], [r.min_rate for _, _, r in picked]
    )
    for start, counts in blocks:
        for t in det.update(counts[cols], start):
            _, name, rule = picked[t.index]
            yield {
                "metric": name,
                "state": t.state,
                "at": t.at,
                "severity": rule.severity,
                "score": round(t.score, 3),
                "rate": round(t.rate, 4),
                "baseline": round(t.baseline, 4),
            }
