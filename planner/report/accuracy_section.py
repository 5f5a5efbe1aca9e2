"""The accuracy table (reports/accuracy.csv from `planner validate`) as a table and a signed-error plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from planner.errors import PlannerError
from planner.report import figures
from planner.report.html import Figure, Paragraph, Section, Table

# The acceptance bound of the CPU suite (issue 5): every cell within 5% of the measured peak.
ERROR_BOUND = 0.05
# Column names `planner validate` may use for the signed relative error of the peak, most specific first.
ERROR_COLUMNS = ("signed_error", "peak_signed_error", "error", "rel_error", "signed_error_pct", "error_pct")
GROUP_COLUMNS = ("method", "family", "model_type", "suite")
LABEL_COLUMNS = ("cell", "cell_id", "name", "slug", "id")


def read_accuracy(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise PlannerError(f"--accuracy {str(path)!r} does not exist; run 'planner validate' first.") from None
    except IsADirectoryError:
        raise PlannerError(f"--accuracy {str(path)!r} is a directory; give the CSV file.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise PlannerError(f"--accuracy {str(path)!r} is not a readable CSV ({type(exc).__name__}).") from None
    return frame


def _error_column(frame: pd.DataFrame) -> str | None:
    for col in ERROR_COLUMNS:
        if col in frame and pd.api.types.is_numeric_dtype(frame[col]):
            return col
    for col in frame.columns:
        if "error" in str(col).lower() and pd.api.types.is_numeric_dtype(frame[col]):
            return str(col)
    return None


TITLE = "How planner was validated (tiny models on CPU)"
DISCLAIMER = (
    "This section is not the accuracy of the estimate in this report. It is how 'planner validate' checked the "
    "estimator: tiny transformers models (a few layers, hidden sizes in the tens to hundreds) trained for a few "
    "steps on CPU, each rank's measured allocated peak compared with planner's estimate of the same run. It "
    "covers the tensors planner models (parameters, gradients, optimizer states, activations, temporaries), not "
    "the GPU-only terms of a GPU estimate (CUDA context, cuBLAS workspace, NCCL buffers, allocator slack), "
    "which are published figures not yet calibrated against GPU profiles."
)


def accuracy_section(frame: pd.DataFrame, source: str) -> Section:
    blocks: list[object] = [Paragraph(DISCLAIMER, kind="warning"),
                            Paragraph(f"From {source}: {len(frame)} validation cells.")]
    err_col = _error_column(frame)
    if err_col is not None and len(frame):
        errors = frame[err_col].astype(float)
        if err_col.endswith("pct"):
            errors = errors / 100.0
        group_col = next((c for c in GROUP_COLUMNS if c in frame), None)
        label_col = next((c for c in LABEL_COLUMNS if c in frame), None)
        labels = frame[label_col].astype(str).tolist() if label_col else [f"cell {i}" for i in range(len(frame))]
        groups = frame[group_col].astype(str).tolist() if group_col else ["all"] * len(frame)
        valid = errors.notna().to_numpy()
        abs_err = errors[valid].abs()
        if valid.any():
            blocks.append(Paragraph(
                f"median |error| {abs_err.median():.2%}, max |error| {abs_err.max():.2%}, "
                f"underestimates in {(errors[valid] < 0).mean():.0%} of cells."
            ))
            blocks.append(Figure(
                figures.accuracy_scatter(
                    [labels[i] for i in range(len(labels)) if valid[i]],
                    errors[valid].tolist(),
                    [groups[i] for i in range(len(groups)) if valid[i]],
                    bound=ERROR_BOUND,
                    title=f"Signed error of the peak per cell (dashed: ±{ERROR_BOUND:.0%})",
                ),
                name="accuracy",
            ))
    rows = [["" if pd.isna(v) else (round(v, 4) if isinstance(v, float) else v) for v in rec]
            for rec in frame.itertuples(index=False, name=None)]
    blocks.append(Table([str(c) for c in frame.columns], rows, caption="Validation table, every cell",
                        collapsible=len(rows) > 20))
    return Section(TITLE, "validation", blocks,
                   subtitle="Estimator vs measured peaks of tiny models on CPU, cell by cell.")
