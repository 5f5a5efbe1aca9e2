"""2-rank FSDP2 profiles on CPU (gloo, torchrun; issue 18): the real fully_shard per decoder layer and on the
root, and what identity attribution makes of its DTensor shards."""

from __future__ import annotations

import math

import pytest
from presets import tiny

from planner.models import spec_from_config
from planner.profile import load_profile
from planner.profile.launcher import run_profile
from planner.specs import FsdpConfig, LoraSpec, Method, Parallelism, Precision, TrainSpec

pytestmark = pytest.mark.slow

# dims divisible by 2: FSDP2's dim-0 padding (_fsdp_param.py, padded_sharded_param_size) adds nothing
LLAMA = tiny("llama", vocab_size=512)
NUM_TENSORS = 2 * 9 + 3  # nine per llama layer, then the embedding, the final norm and the output head


def _run(tmp_path, name, method, fsdp=FsdpConfig()):
    train = TrainSpec(method=method, precision=Precision.BF16_MIXED, parallelism=Parallelism.fsdp2(fsdp),
                      lora=LoraSpec(rank=8), micro_batch=2, seq_len=32)
    status, message, out = run_profile(spec_from_config(LLAMA, "tiny-llama"), train, num_gpus=2, steps=3,
                                       device="cpu", out=tmp_path / name, show_progress=False)  # fmt: skip
    assert status == "ok", message
    return load_profile(out)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("fsdp2")
    jobs = {"full": (Method.FULL,), "lora": (Method.LORA,),
            "noreshard": (Method.FULL, FsdpConfig(reshard_after_forward=False))}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(_run, tmp, k, *args) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("kind", ["full", "noreshard"])
def test_full_fine_tuning_shards_fp32_parameters_gradients_and_moments(profiles, kind):
    prof = profiles[kind]
    assert prof.meta["workload"]["engine"] == "fsdp2"
    for rank in prof.ranks:
        assert rank.status == "ok" and rank.steady_state
        ident = rank.identity
        # built in fp32 under the mixed-precision policy, each rank keeps half of every tensor (its DTensor shard)
        assert ident["param_storage_bytes"] * 2 == ident["param_storage_bytes_at_build"] == 4 * ident["num_params"]
        at_step = rank.phases["optimizer_step"].by_category
        assert at_step["params"] == ident["param_storage_bytes"]
        # the reduce-scatter output in fp32 (reduce_dtype fp32 = the sharded parameters' dtype: no copy)
        assert at_step["grads"] == ident["param_storage_bytes"]
        # AdamW's exp_avg and exp_avg_sq per shard, and a 4-byte step counter per tensor
        assert at_step["optimizer_states"] == 2 * ident["param_storage_bytes"] + 4 * NUM_TENSORS
        assert sum(rank.peak.by_category.values()) == rank.peak.allocated_bytes


def test_lora_shards_the_frozen_base_without_gradients(profiles):
    for rank in profiles["lora"].ranks:
        ident = rank.identity
        at_step = rank.phases["optimizer_step"].by_category
        num_adapters = ident["num_trainable_params"]
        assert at_step["params"] == ident["param_storage_bytes"] == 2 * ident["num_params"]
        assert at_step["grads"] == 4 * math.ceil(num_adapters / 2)
        assert at_step["optimizer_states"] > 2 * at_step["grads"]
