"""2-rank DeepSpeed ZeRO 1/2/3 profiles on CPU (gloo, torchrun): what each stage divides per rank."""

from __future__ import annotations

import pytest
from presets import tiny

from planner.cli.options import build_train_spec
from planner.models import spec_from_config
from planner.profile import load_profile
from planner.profile.launcher import run_profile

pytestmark = pytest.mark.slow

LLAMA = tiny("llama", vocab_size=1000)
# DeepSpeed pads each rank's flat partition; AdamW adds a 4-byte step counter per tensor. Both are tiny
# next to the states of 200k parameters, well under this share of the unsharded figure.
TOLERANCE = 0.02


def _run(tmp_path, name, zero: int, gpus: int):
    spec = spec_from_config(LLAMA, "tiny-llama")
    train = build_train_spec(precision="bf16-mixed", zero=zero, micro_batch=2, seq_len=32)
    status, message, out = run_profile(spec, train, num_gpus=gpus, steps=3, device="cpu", out=tmp_path / name,
                                       show_progress=False)  # fmt: skip
    assert status == "ok", message
    return load_profile(out)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """The 1-rank figure (plain training with the same fp32 master weights and moments, 12 bytes/param) and
    2-rank runs of stages 1-3, launched side by side: each torchrun job spends most of its time importing."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("zero")
    jobs = {"base": (0, 1), 1: (1, 2), 2: (2, 2), 3: (3, 2)}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(_run, tmp, f"z{k}", zero, gpus) for k, (zero, gpus) in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_ranks_halve_what_the_stage_shards(profiles, stage):
    prof = profiles[stage]
    one_rank = profiles["base"].ranks[0]
    assert prof.num_ranks == 2 and prof.meta["workload"]["engine"] == "deepspeed"
    base = one_rank.phases["optimizer_step"].by_category
    num = one_rank.identity["num_params"]
    assert base["params"] == 2 * num
    for rank in prof.ranks:
        assert rank.status == "ok" and rank.steady_state
        at_step = rank.phases["optimizer_step"].by_category
        # Optimizer states (fp32 master + moments) are sharded from stage 1 on: half per rank.
        assert at_step["optimizer_states"] == pytest.approx(base["optimizer_states"] / 2, rel=TOLERANCE)
        if stage == 3:
            # Stage 3 shards the 16-bit parameters too (small ones under 10 x hidden stay whole).
            assert at_step["params"] == pytest.approx(num, rel=TOLERANCE)
        else:
            assert at_step["params"] == pytest.approx(2 * num, rel=TOLERANCE)
        if stage >= 2:
            # Stages 2 and 3 keep this rank's share of the 16-bit gradients (plus, at stage 2, the
            # gradients of a bucket DeepSpeed has not reduced yet when the step starts).
            assert num <= at_step["grads"] <= 1.1 * num
        assert sum(rank.peak.by_category.values()) == rank.peak.allocated_bytes
    tl = prof.timeline()
    assert set(tl["rank"]) == {0, 1}
