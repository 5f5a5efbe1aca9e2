"""Profile directories: atomic assembly, loading, and one-sentence errors for anything malformed (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.profile.attribution import CATEGORIES
from planner.profile.store import assemble, load_profile, publish, staging_dir
from planner.specs import TrainSpec, train_spec_to_dict

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
}


def _peak(by_category: dict[str, int], phase: str = "backward") -> dict:
    return {
        "allocated_bytes": sum(by_category.values()),
        "t_ns": 123,
        "step": 1,
        "micro_batch": 0,
        "phase": phase,
        "by_category": by_category,
        "detail": {},
    }


def write_synthetic_profile(out: Path, by_category: dict[str, int], *, num_ranks: int = 1, status: str = "ok",
                            train: TrainSpec | None = None, with_peak: bool = True) -> Path:  # fmt: skip
    """A profile directory with hand-made peaks (no torch run), written by the real store."""
    staging = staging_dir(out)
    (staging / "ranks").mkdir(parents=True)
    ranks = [
        {
            "rank": r,
            "status": status,
            "message": "" if status == "ok" else f"rank {r} failed during step 1 backward: boom.",
            "steps_completed": 3,
            "steady_state": True,
            "peak": _peak(by_category) if with_peak else None,
            "phases": {"backward": _peak(by_category), "forward": _peak(by_category, "forward")} if with_peak else {},
            "identity": {},
            "cuda": None,
            "files": [],
        }
        for r in range(num_ranks)
    ]
    train = train or TrainSpec(seq_len=64, micro_batch=2)
    meta = {
        "model": {"name": "tiny-llama", "source": "test", "config": TINY_LLAMA},
        "train": train_spec_to_dict(train),
        "cluster": {"gpu": None, "num_gpus": num_ranks, "num_nodes": 1},
        "device": "cpu",
        "steps": 3,
    }
    assemble(staging, meta, ranks, status, "" if status == "ok" else "rank 0 failed.", num_ranks)
    publish(staging, out, force=True)
    return out


BYTES = {"params": 1000, "grads": 500, "optimizer_states": 3000, "activations": 700, "temporaries": 200, "other": 8}


def test_round_trip(tmp_path):
    out = write_synthetic_profile(tmp_path / "p", BYTES, num_ranks=2)
    prof = load_profile(out)
    assert prof.status == "ok" and prof.num_ranks == 2 and prof.device == "cpu"
    assert [r.rank for r in prof.ranks] == [0, 1]
    assert prof.ranks[1].peak.by_category == BYTES
    assert prof.ranks[0].phases["forward"].phase == "forward"
    assert prof.model_spec().hidden_size == 64
    assert prof.train_spec().seq_len == 64
    assert len(prof.timeline()) == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "summary.json", "timeline.parquet"]
    assert not staging_dir(out).exists()


def test_replacing_needs_force(tmp_path):
    out = write_synthetic_profile(tmp_path / "p", BYTES)
    with pytest.raises(PlannerError, match="--force"):
        from planner.profile.store import check_target

        check_target(out, force=False)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / "summary.json").unlink(), "no summary.json"),
        (lambda d: (d / "summary.json").write_text("{not json"), "cannot be read as JSON"),
        (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:-20]), "does not match"),
        (lambda d: (d / "timeline.parquet").unlink(), "timeline.parquet is missing"),
        (lambda d: (d / "summary.json").write_text(json.dumps({**_summary(d), "complete": False})), "complete"),
        (lambda d: (d / "summary.json").write_text(json.dumps({**_summary(d), "status": "great"})), "status"),
        (lambda d: (d / "summary.json").write_text(json.dumps({**_summary(d), "num_ranks": 3})), "num_ranks"),
        (
            lambda d: (d / "summary.json").write_text(
                json.dumps({**_summary(d), "ranks": [{**_summary(d)["ranks"][0], "peak": {"allocated_bytes": 1}}]})
            ),
            "lacks one of",
        ),
    ],
)
def test_malformed_profiles_raise_one_sentence(tmp_path, damage, expected):
    out = write_synthetic_profile(tmp_path / "p", BYTES)
    damage(out)
    with pytest.raises(PlannerError, match=expected) as info:
        load_profile(out)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_categories_must_add_up(tmp_path):
    out = write_synthetic_profile(tmp_path / "p", BYTES)
    s = _summary(out)
    s["ranks"][0]["peak"]["allocated_bytes"] += 1
    (out / "summary.json").write_text(json.dumps(s))
    with pytest.raises(PlannerError, match="add up"):
        load_profile(out)


def test_not_a_directory(tmp_path):
    with pytest.raises(PlannerError, match="does not exist"):
        load_profile(tmp_path / "nothing")


def test_a_half_written_profile_is_never_at_the_target(tmp_path):
    """The directory appears only by a rename: before publish() the target does not exist."""
    out = tmp_path / "p"
    staging = staging_dir(out)
    (staging / "ranks").mkdir(parents=True)
    (staging / "meta.json").write_text("{}")
    assert not out.exists()
    with pytest.raises(PlannerError, match="does not exist"):
        load_profile(out)
    with pytest.raises(PlannerError, match="no summary.json"):
        load_profile(staging)


def test_store_and_compare_do_not_import_torch():
    code = "import sys, planner.profile, planner.compare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    assert out.stdout.strip() == "False"


def test_categories_are_the_estimators():
    from planner.estimate.result import CATEGORIES as EST

    # "other" is the profile's name for tensors outside the estimator's categories; the rest are shared.
    assert set(CATEGORIES) - {"other"} == set(EST) - {"overhead"}
