"""reports/accuracy.csv and reports/accuracy.md: written atomically, read back to resume a matrix. No torch.

The CSV has one row per cell and rank (two-rank cells have two rows; a cell that could not be compared has
one row with its status and message): every input, the estimated and measured bytes of every category at
the peak, each category's signed error as a share of the measured peak, the signed error of the peak.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from planner.units import MIB, fmt_gib
from planner.validate.results import CATEGORIES, CellResult, RankResult, Summary, group_errors

RESULT_COLUMNS = ["status", "message", "source", "measured_with", "rank", "estimated_peak_phase", "measured_peak_phase",
                  "measured_peak_step",
                  *[f"{side}_{c}_bytes" for c in CATEGORIES for side in ("estimated", "measured")],
                  "estimated_allocated_bytes", "measured_allocated_bytes", "error",
                  *[f"{c}_error_of_peak" for c in CATEGORIES], "profile_wall_s"]  # fmt: skip
GROUP_KEYS = ("family", "method", "zero", "ckpt", "attn", "precision", "seq_len", "micro_batch")


def report_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """The CSV and Markdown files a run writes into ``out_dir``."""
    return out_dir / f"{stem}.csv", out_dir / f"{stem}.md"


def check_report_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Refuse (PlannerError) unless both reports may be written (planner.safe_write): new or regular files."""
    from planner.safe_write import check_output_file

    paths = report_paths(out_dir, stem)
    for path in paths:
        check_output_file(path, flag="--out")
    return paths


# ---------------------------------------------------------------- CSV


def csv_text(results: list[CellResult]) -> str:
    input_cols: list[str] = []
    for r in results:
        input_cols += [k for k in r.inputs if k not in input_cols]
    out = io.StringIO()
    w = csv.DictWriter(out, ["id", *input_cols, *RESULT_COLUMNS], lineterminator="\n")
    w.writeheader()
    for r in results:
        base = {"id": r.id, **r.inputs, "status": r.status, "message": r.message, "source": r.source,
                "measured_with": r.measured_with,
                "profile_wall_s": "" if r.profile_wall_s is None else f"{r.profile_wall_s:.1f}"}  # fmt: skip
        if not r.ranks:
            w.writerow(base)
            continue
        for rank in r.ranks:
            row = dict(base, rank=rank.rank, estimated_peak_phase=rank.estimated_phase,
                       measured_peak_phase=rank.measured_phase,
                       measured_peak_step="" if rank.measured_step is None else rank.measured_step,
                       estimated_allocated_bytes=rank.estimated_bytes, measured_allocated_bytes=rank.measured_bytes,
                       error=f"{rank.error:.6f}")  # fmt: skip
            for c in CATEGORIES:
                row[f"estimated_{c}_bytes"] = rank.estimated[c]
                row[f"measured_{c}_bytes"] = rank.measured[c]
                row[f"{c}_error_of_peak"] = f"{rank.category_error(c):.6f}"
            w.writerow(row)
    return out.getvalue()


def read_measurements(path: Path, fingerprint: str, *, any_fingerprint: bool = False) -> dict[str, dict[str, Any]]:
    """Measured bytes of every fully compared cell of an earlier CSV that was measured with ``fingerprint``
    (planner/validate/run.py): id -> {"ranks": [(rank, bytes by category, phase, step)], "wall_s": ...,
    "measured_with": the row's fingerprint}. ``any_fingerprint``: whatever profiler and versions measured them
    (``planner validate --keep-measurements``).

    A malformed or foreign file yields nothing (the cells are profiled again).
    """
    if not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row.get("status") != "ok" or row.get("rank", "") == "" or not row.get("measured_with") or (
                    row.get("measured_with") != fingerprint and not any_fingerprint):
                continue
            measured = {c: int(row[f"measured_{c}_bytes"]) for c in CATEGORIES}
            step = row.get("measured_peak_step", "")
            entry = out.setdefault(row["id"], {"ranks": [], "wall_s": None, "measured_with": row["measured_with"]})
            entry["ranks"].append((int(row["rank"]), measured, row.get("measured_peak_phase", ""),
                                   int(step) if step not in ("", None) else None))  # fmt: skip
            wall = row.get("profile_wall_s", "")
            entry["wall_s"] = float(wall) if wall else None
    except (OSError, KeyError, ValueError, csv.Error):
        return {}
    return out


# ---------------------------------------------------------------- Markdown


def _mib(b: int) -> str:
    return f"{b / MIB:.3f}"


def _worst_category(rank: RankResult) -> str:
    c = max(CATEGORIES, key=lambda c: abs(rank.category_error(c)))
    return f"{c} {rank.category_error(c):+.2%}"


def _older_note(results: list[CellResult], fingerprint: str) -> str:
    """How many rows an earlier profiler version measured (``--keep-measurements``), by fingerprint."""
    older: dict[str, int] = {}
    for r in results:
        if r.measured_with and fingerprint and r.measured_with != fingerprint:
            older[r.measured_with] = older.get(r.measured_with, 0) + 1
    if not older:
        return ""
    parts = ", ".join(f"{n} with {fp}" for fp, n in sorted(older.items()))
    return (f"; {sum(older.values())} cells keep the measurements an earlier profiler version took ({parts}: "
            "re-estimated, not re-profiled; the CSV's measured_with column names each)")


def markdown(results: list[CellResult], summary: Summary, *, title: str, context: dict[str, Any]) -> str:
    v = context.get("versions", {})
    hw = context.get("hardware", {})
    lines = [f"# {title}", ""]
    lines.append(context.get("description", ""))
    lines += ["", f"- generated: {context.get('date', time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))} by "
              f"`{context.get('command', 'planner validate')}`",
              f"- matrix: {context.get('matrix', '')}",
              "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v) if v[k]),
              f"- hardware: {hw.get('cpu', '?')}, {hw.get('num_cpus', '?')} logical CPUs, "
              f"{fmt_gib(hw.get('ram_bytes') or 0, 0)} RAM ({hw.get('platform', '')})",
              f"- CPU kernel path: {hw.get('kernel_path', 'not recorded')}",
              f"- planner commit: {context.get('git_commit') or 'unknown'}; measurement fingerprint "
              f"{context.get('fingerprint', '')} (profiler source and library versions)"
              + _older_note(results, context.get("fingerprint", "")),
              f"- time: {context.get('wall_s', 0):.0f} s wall for this run; {context.get('profile_s', 0):.0f} s of "
              f"profiling summed over the {context.get('num_profiled', 0)} cells profiled in it "
              f"({context.get('num_reused', 0)} reused from the cache or an earlier CSV)",
              ""]  # fmt: skip
    if summary.num_cells != context.get("num_planned", summary.num_cells):
        lines += [f"**Partial**: {summary.num_cells} of {context['num_planned']} cells done.", ""]
    lines += ["## Summary", "", "| metric | value | bound | met |", "|---|---:|---:|:---:|"]
    for name, value, bound, met in summary.bound_rows():
        lines.append(f"| {name} | {value} | {bound} | {'yes' if met else '**no**'} |")
    lines += ["", f"{summary.num_within_bounds} of {summary.num_cells} cells meet every per-cell bound. "
              "Errors are signed, estimate minus measurement, relative to the rank's measured allocated peak "
              "(negative: planner underestimates); a two-rank cell counts with its worse rank.", "",
              "Largest category error in any cell, as a share of that cell's measured peak:", "",
              "| " + " | ".join(CATEGORIES) + " |", "|" + "---:|" * len(CATEGORIES),
              "| " + " | ".join(f"{summary.max_category_error[c]:.2%}" for c in CATEGORIES) + " |", ""]  # fmt: skip
    keys = [k for k in GROUP_KEYS if any(k in r.inputs for r in results)]
    if keys:
        lines += ["## By factor", "", "| factor | level | cells | median abs | max abs | mean signed |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for k in keys:
            for level, n, med, mx, mean in group_errors(results, k):
                lines.append(f"| {k} | {level} | {n} | {med:.2%} | {mx:.2%} | {mean:+.2%} |")
        lines.append("")
    failing = [r for r in results if r.violations()]
    lines += ["## Cells outside the bounds", ""]
    if not failing:
        lines.append("None.")
    for r in failing:
        lines.append(f"- `{r.id}`: " + "; ".join(r.violations()))
    lines += ["", "## All cells", "", "Bytes in MiB at the steady-state allocated peak (worse rank of a two-rank cell).", "",
              "| cell | estimated | measured | error | largest category error / peak | peak phase (est / meas) |",
              "|---|---:|---:|---:|---|---|"]  # fmt: skip
    for r in results:
        if not r.ok:
            lines.append(f"| `{r.id}` | | | {r.status} | {r.message} | |")
            continue
        w = r.worst
        lines.append(f"| `{r.id}` | {_mib(w.estimated_bytes)} | {_mib(w.measured_bytes)} | {w.error:+.2%} | "
                     f"{_worst_category(w)} | {w.estimated_phase} / {w.measured_phase} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def write_reports(results: list[CellResult], summary: Summary, out_dir: Path, stem: str, *, title: str,
                  context: dict[str, Any]) -> tuple[Path, Path]:  # fmt: skip
    from planner.safe_write import write_atomic

    csv_path, md_path = check_report_paths(out_dir, stem)  # both, before either is written
    write_atomic(csv_path, csv_text(results), flag="--out", make_parents=True)
    write_atomic(md_path, markdown(results, summary, title=title, context=context), flag="--out", make_parents=True)
    return csv_path, md_path
