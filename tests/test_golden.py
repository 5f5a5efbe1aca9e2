"""Issue 15: a refactoring leaves every estimate byte-identical (tests/golden.py holds the reference)."""

from __future__ import annotations

import golden
import pytest


@pytest.mark.slow
def test_catalog_estimates_match_the_golden_file():
    """Every catalog model on 1, 8 and 64 GPUs: the whole `planner estimate --json` (all rows, fit limits,
    notes), equal to the committed file. A deliberate change regenerates it (`python tests/golden.py --update`)
    in its own commit."""
    want = golden.load_golden()
    got = golden.estimates()
    assert sorted(got) == sorted(want)
    diffs = [f"{key}{d}" for key in sorted(want) for d in golden.differences(want[key], got[key])]
    assert not diffs, f"{len(diffs)} differences, first ones:\n" + "\n".join(diffs[:20])



def test_the_avx2_accuracy_table_is_what_the_estimator_says_now():
    """Every estimated column of reports/avx2/accuracy.csv, re-estimated from the cell's inputs on the AVX2
    kernel path: the published table describes the estimator in this checkout."""
    rows = golden.accuracy_rows()
    assert len(rows) >= 55
    stale = [(rid, k, want[k], got[k]) for rid, want, got in rows for k in want if want[k] != got[k]]
    assert not stale, "\n".join(f"{rid}: {k} table {w} now {g}" for rid, k, w, g in stale[:20])
