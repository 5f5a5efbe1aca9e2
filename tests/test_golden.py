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

