"""Release drift (issue 13): what newer library releases change, against the locked run. No torch.

scripts/drift.sh runs the same tests and the same validation matrix twice, in the locked venv (.venv,
requirements/lock.txt) and in a venv with the newest releases (.venv-drift), and then this module compares:

- versions: the drift venv's ``pip freeze`` against the lock (a CPU build's local label, ``+cpu``, is not a
  difference: the lock pins ``torch==2.13.0`` and pip installs ``2.13.0+cpu``);
- tests: each test's outcome in the two runs (pytest's JUnit XML), with the failure's first line;
- cells: each cell and rank of the two ``planner validate`` CSVs (planner/validate/report.py), measured and
  estimated bytes per category, the peak error and whether the cell still meets issue 5's bounds; then per
  category how many cells moved and by how much (share of the cell's measured peak), and which factor levels
  the moved cells share.

Usage: python -m planner.validate.drift --lock requirements/lock.txt --freeze FREEZE --lock-dir DIR
--new-dir DIR [--stem accuracy-ci]. Exit status 0 when nothing moved, 3 when a version-sensitive result
moved (a test's outcome, a cell's bytes or verdict), 1 on unusable input.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from planner.validate.results import CATEGORIES, CellResult, RankResult, summarize

MOVED_EXIT = 3
FACTORS = ("family", "method", "zero", "ckpt", "attn", "precision")

# ---------------------------------------------------------------- versions


def normalize(name: str) -> str:
    """PEP 503 project name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """The version without its local label: 2.13.0+cpu -> 2.13.0."""
    return version.split("+", 1)[0]


def read_pins(text: str) -> dict[str, tuple[str, str]]:
    """``name==version`` lines of a lock file or ``pip freeze`` output: normalized name -> (name, version).
    Comments, blank lines, editable installs and options are skipped."""
    pins: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        name, version = (s.strip() for s in line.split("==", 1))
        name = name.split("[", 1)[0].strip()
        pins[normalize(name)] = (name, version.split(";", 1)[0].strip())
    return pins


def version_changes(lock: dict[str, tuple[str, str]], installed: dict[str, tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(name, locked version or '-', installed version or '-') for every package that differs."""
    out = []
    for key in sorted(set(lock) | set(installed)):
        locked = lock.get(key, (None, "-"))
        have = installed.get(key, (None, "-"))
        if public_version(locked[1]) != public_version(have[1]):
            out.append((locked[0] or have[0] or key, locked[1], have[1]))
    return out


# ---------------------------------------------------------------- tests


@dataclass(frozen=True)
class Outcome:
    status: str  # passed, failed, skipped, xfailed
    message: str = ""


def read_junit(path: Path) -> dict[str, Outcome]:
    """Test id (``tests/test_x.py::test_y[param]``) -> outcome, from pytest's ``--junitxml``."""
    root = ET.parse(path).getroot()
    out: dict[str, Outcome] = {}
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        test_id = f"{classname.replace('.', '/')}.py::{name}" if classname else name
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "failed", (child.get("message") or "").strip()
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                status, message = ("xfailed" if xfail else "skipped"), (child.get("message") or "").strip()
        out[test_id] = Outcome(status, message.splitlines()[0][:300] if message else "")
    return out


def test_changes(lock: dict[str, Outcome], new: dict[str, Outcome]) -> list[tuple[str, str, str, str]]:
    """(test id, locked outcome, newest outcome, the failure message of whichever failed) where they differ."""
    out = []
    for test_id in sorted(set(lock) | set(new)):
        a, b = lock.get(test_id, Outcome("absent")), new.get(test_id, Outcome("absent"))
        if a.status != b.status:
            out.append((test_id, a.status, b.status, b.message or a.message))
    return out


# ---------------------------------------------------------------- validation cells


def read_cells(path: Path) -> dict[str, CellResult]:
    """Cells of a ``planner validate`` CSV, each with its ranks (a cell that was not compared has none)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    cells: dict[str, CellResult] = {}
    ranks: dict[str, list[RankResult]] = {}
    for row in rows:
        cid = row["id"]
        if cid not in cells:
            inputs = {k: row.get(k, "") for k in FACTORS}
            cells[cid] = CellResult(cid, inputs, row["status"], row.get("message", ""))
            ranks[cid] = []
        if row.get("rank", "") == "":
            continue
        step = row.get("measured_peak_step", "")
        ranks[cid].append(RankResult(
            int(row["rank"]),
            {c: int(row[f"estimated_{c}_bytes"]) for c in CATEGORIES},
            {c: int(row[f"measured_{c}_bytes"]) for c in CATEGORIES},
            row.get("estimated_peak_phase", ""), row.get("measured_peak_phase", ""),
            int(step) if step else None))  # fmt: skip
    return {cid: CellResult(c.id, c.inputs, c.status, c.message, tuple(sorted(ranks[cid], key=lambda r: r.rank)))
            for cid, c in cells.items()}  # fmt: skip


@dataclass(frozen=True)
class CellMove:
    id: str
    inputs: dict[str, str]
    what: str  # "bytes" (a category moved), "only-lock", "only-new", "status"
    lock_error: float | None = None
    new_error: float | None = None
    lock_ok: bool | None = None  # meets every per-cell bound
    new_ok: bool | None = None
    # category -> (measured delta, estimated delta) in bytes, the rank with the largest move of each
    categories: dict[str, tuple[int, int]] = field(default_factory=dict)
    share: dict[str, float] = field(default_factory=dict)  # category -> |measured delta| / new measured peak
    note: str = ""


def _rank_deltas(a: RankResult, b: RankResult) -> dict[str, tuple[int, int]]:
    return {c: (b.measured[c] - a.measured[c], b.estimated[c] - a.estimated[c]) for c in CATEGORIES
            if b.measured[c] != a.measured[c] or b.estimated[c] != a.estimated[c]}  # fmt: skip


def cell_changes(lock: dict[str, CellResult], new: dict[str, CellResult]) -> list[CellMove]:
    """Every cell whose measured or estimated bytes, status or verdict differ between the two runs."""
    out = []
    for cid in sorted(set(lock) | set(new)):
        a, b = lock.get(cid), new.get(cid)
        if a is None or b is None:
            c = a or b
            out.append(CellMove(cid, dict(c.inputs), "only-lock" if b is None else "only-new"))
            continue
        if not (a.ok and b.ok):
            if (a.status, len(a.ranks)) != (b.status, len(b.ranks)) or a.message != b.message:
                out.append(CellMove(cid, dict(b.inputs), "status", note=f"{a.status} -> {b.status}: {b.message or a.message}"))
            continue
        cats: dict[str, tuple[int, int]] = {}
        share: dict[str, float] = {}
        for ra, rb in zip(a.ranks, b.ranks, strict=False):
            for c, (dm, de) in _rank_deltas(ra, rb).items():
                if c not in cats or abs(dm) > abs(cats[c][0]) or (dm == cats[c][0] and abs(de) > abs(cats[c][1])):
                    cats[c] = (dm, de)
                    share[c] = abs(dm) / rb.measured_bytes
        ok_a, ok_b = not a.violations(), not b.violations()
        if cats or ok_a != ok_b or len(a.ranks) != len(b.ranks):
            out.append(CellMove(cid, dict(b.inputs), "bytes", a.error, b.error, ok_a, ok_b, cats, share))
    return out


def category_summary(moves: list[CellMove]) -> dict[str, tuple[int, float, int]]:
    """category -> (cells whose measured bytes moved, largest move as a share of the peak, cells whose
    estimate moved)."""
    out = {}
    for c in CATEGORIES:
        measured = [m for m in moves if c in m.categories and m.categories[c][0]]
        estimated = [m for m in moves if c in m.categories and m.categories[c][1]]
        if measured or estimated:
            out[c] = (len(measured), max((m.share[c] for m in measured), default=0.0), len(estimated))
    return out


def shared_levels(moves: list[CellMove], cells: dict[str, CellResult]) -> list[tuple[str, str, int, int]]:
    """(factor, level, moved cells, all cells at that level) for each factor level that every moved cell has,
    the level most concentrated in moved cells first (all 7 ckpt=True cells moving and nothing else points at
    checkpointing)."""
    moved = [m for m in moves if m.what in ("bytes", "status")]
    if not moved:
        return []
    out = []
    for k in FACTORS:
        levels = {m.inputs.get(k, "") for m in moved}
        if len(levels) == 1 and "" not in levels:
            (level,) = levels
            total = sum(1 for c in cells.values() if c.inputs.get(k, "") == level)
            out.append((k, level, len(moved), total))
    return sorted(out, key=lambda t: (-t[2] / max(t[3], 1), t[0]))


# ---------------------------------------------------------------- rendering


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2%}"


def _summary_line(cells: dict[str, CellResult]) -> str:
    s = summarize(list(cells.values()))
    cat = max(s.max_category_error.values(), default=0.0)
    med = "n/a" if s.median_abs_error is None else f"{s.median_abs_error:.2%}"
    mx = "n/a" if s.max_abs_error is None else f"{s.max_abs_error:.2%}"
    under = "0.00%" if not s.worst_under or s.worst_under >= 0 else f"{-s.worst_under:.2%}"
    return (f"{s.num_within_bounds}/{s.num_cells} cells within every bound, median |err| {med}, max |err| {mx}, "
            f"worst underestimate {under}, max category error {cat:.2%}")  # fmt: skip


def render(versions, tests, lock_cells, new_cells, moves, *, lock_tests=None, new_tests=None) -> str:
    lines = ["== (a) versions that differ from requirements/lock.txt"]
    if not versions:
        lines.append("none: the drift venv has exactly the locked versions")
    for name, locked, have in versions:
        lines.append(f"  {name:<24} lock {locked:<14} newest {have}")
    lines += ["", "== (b) tests whose outcome moved (locked run -> newest run)"]
    if lock_tests is not None and new_tests is not None:
        for label, outcomes in (("locked", lock_tests), ("newest", new_tests)):
            counts = Counter(o.status for o in outcomes.values())
            lines.append(f"  {label}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if not tests:
        lines.append("  none moved")
    for test_id, a, b, msg in tests:
        lines.append(f"  {a} -> {b}: {test_id}")
        if msg:
            lines.append(f"      {msg}")
    lines += ["", "== (b) validation cells (planner validate --suite cpu) that moved"]
    lines.append(f"  locked: {_summary_line(lock_cells)}")
    lines.append(f"  newest: {_summary_line(new_cells)}")
    both = set(lock_cells) & set(new_cells)
    lines.append(f"  {len(both)} cells in both runs, {len(both - {m.id for m in moves})} identical byte for byte "
                 f"(measured and estimated, every rank and category)")  # fmt: skip
    if not moves:
        lines.append("  no cell moved")
    for m in moves:
        if m.what != "bytes":
            lines.append(f"  {m.id}: {m.what} {m.note}".rstrip())
            continue
        verdict = "" if m.lock_ok == m.new_ok else (" now OUTSIDE the bounds" if m.lock_ok else " now within the bounds")
        lines.append(f"  {m.id}: peak error {_pct(m.lock_error)} -> {_pct(m.new_error)}{verdict}")
        for c, (dm, de) in m.categories.items():
            lines.append(f"      {c:<17} measured {dm:+,} B ({m.share[c]:.2%} of the peak), estimated {de:+,} B")
    cats = category_summary(moves)
    lines += ["", "== (b) categories that moved (over all cells)"]
    if not cats:
        lines.append("  none")
    for c, (n, share, n_est) in cats.items():
        lines.append(f"  {c:<17} measured moved in {n} cells (largest {share:.2%} of the peak); estimate moved in {n_est}")
    if any(m.what in ("bytes", "status") for m in moves):
        levels = shared_levels(moves, new_cells or lock_cells)
        lines += ["", "== what every moved cell shares (factor=level: moved / cells at that level)"]
        lines.append("  " + (", ".join(f"{k}={v}: {n}/{t}" for k, v, n, t in levels) or "no factor level"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.validate.drift", description=__doc__.splitlines()[0])
    p.add_argument("--lock", type=Path, required=True, help="requirements/lock.txt")
    p.add_argument("--freeze", type=Path, required=True, help="pip freeze of the drift venv")
    p.add_argument("--lock-dir", type=Path, required=True, help="the locked run: junit.xml and <stem>.csv")
    p.add_argument("--new-dir", type=Path, required=True, help="the newest run: junit.xml and <stem>.csv")
    p.add_argument("--stem", default="accuracy-ci")
    args = p.parse_args(argv)
    try:
        versions = version_changes(read_pins(args.lock.read_text()), read_pins(args.freeze.read_text()))
        lock_tests, new_tests = read_junit(args.lock_dir / "junit.xml"), read_junit(args.new_dir / "junit.xml")
        lock_cells = read_cells(args.lock_dir / f"{args.stem}.csv")
        new_cells = read_cells(args.new_dir / f"{args.stem}.csv")
    except (OSError, ET.ParseError, KeyError, ValueError, csv.Error) as exc:
        print(f"error: cannot read the drift runs: {exc}", file=sys.stderr)
        return 1
    tests = test_changes(lock_tests, new_tests)
    moves = cell_changes(lock_cells, new_cells)
    sys.stdout.write(render(versions, tests, lock_cells, new_cells, moves, lock_tests=lock_tests, new_tests=new_tests))
    return MOVED_EXIT if tests or moves else 0


if __name__ == "__main__":
    raise SystemExit(main())
