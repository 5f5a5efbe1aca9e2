"""`planner compare`: the estimator on a profile's own inputs vs the profile, per rank and category (fast)."""

from __future__ import annotations

import json

import pytest
from test_profile_store import BYTES, write_synthetic_profile

from planner import catalog
from planner.compare import ROWS, compare
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.profile.store import load_profile
from planner.specs import Cluster


def _estimate_for(prof):
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=prof.num_ranks)
    return estimate(prof.model_spec(), prof.train_spec(), cluster, device="cpu")


def test_rows_are_estimate_minus_measurement(tmp_path):
    prof = load_profile(write_synthetic_profile(tmp_path / "p", BYTES, num_ranks=2))
    est = _estimate_for(prof)
    result = compare(est, prof)
    assert [r.rank for r in result.ranks] == [0, 1]
    peak = sum(BYTES.values())
    for rc in result.ranks:
        assert [row.name for row in rc.rows] == list(ROWS)
        for cat in ("params", "grads", "optimizer_states", "activations", "temporaries"):
            row = rc.row(cat)
            assert row.estimated_bytes == getattr(est.per_gpu, f"{cat}_bytes")
            assert row.measured_bytes == BYTES[cat]
            assert row.error_bytes == row.estimated_bytes - BYTES[cat]
            assert row.error_of_peak == pytest.approx(row.error_bytes / peak)
        assert rc.row("other").estimated_bytes == 0 and rc.row("other").measured_bytes == 8
        allocated = rc.row("allocated")
        assert allocated.measured_bytes == peak
        assert allocated.estimated_bytes == est.per_gpu.total_bytes - est.per_gpu.overhead_bytes
        assert rc.measured_peak_phase == "backward" and rc.estimated_peak_phase == est.peak_phase
        # Phases both sides know are compared too.
        assert set(rc.phases) == {"backward", "forward"} & set(est.phases)


def test_relative_error_of_an_empty_category_is_none(tmp_path):
    prof = load_profile(write_synthetic_profile(tmp_path / "p", {**BYTES, "grads": 0}))
    row = compare(_estimate_for(prof), prof).ranks[0].row("grads")
    assert row.relative_error is None and row.to_dict()["error_bytes"] == row.error_bytes


def test_a_profile_without_any_step_cannot_be_compared(tmp_path):
    prof = load_profile(write_synthetic_profile(tmp_path / "p", BYTES, status="failed", with_peak=False))
    assert prof.status == "failed"
    with pytest.raises(PlannerError, match="no rank with a recorded step"):
        compare(_estimate_for(prof), prof)


def test_cli_json(tmp_path, cli):
    out = write_synthetic_profile(tmp_path / "p", BYTES)
    res = cli("compare", str(out), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "ok" and data["device"] == "cpu"
    rows = {r["name"]: r for r in data["ranks"][0]["rows"]}
    assert rows["params"]["measured_bytes"] == BYTES["params"]
    assert rows["allocated"]["measured_bytes"] == sum(BYTES.values())


def test_cli_table(tmp_path, cli):
    out = write_synthetic_profile(tmp_path / "p", BYTES)
    res = cli("compare", str(out))
    assert res.returncode == 0, res.stderr
    assert "optimizer_states" in res.stdout and "rank 0" in res.stdout


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "not-json"])
def test_cli_malformed_profile_is_one_sentence_and_exit_1(tmp_path, cli, how):
    out = tmp_path / "p"
    if how == "missing":
        pass
    elif how == "empty":
        out.mkdir()
    else:
        write_synthetic_profile(out, BYTES)
        if how == "truncated":
            data = (out / "timeline.parquet").read_bytes()
            (out / "timeline.parquet").write_bytes(data[: len(data) // 2])
        else:
            (out / "meta.json").write_text("nope")
    res = cli("compare", str(out))
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
