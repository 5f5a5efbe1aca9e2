"""The --device cuda path on a real GPU: memory history snapshot, memory_stats per phase, NVML samples.

Runs only where torch sees a CUDA GPU (CI on CPU skips it; the CPU path is covered by the other tests).
"""

from __future__ import annotations

import pickle

import pytest
import torch

from planner.cli.options import build_train_spec
from planner.models import spec_from_config
from planner.profile import load_profile
from planner.profile.launcher import run_profile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LLAMA = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096, "max_position_embeddings": 512}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_cuda_profile_records_snapshot_stats_and_nvml(tmp_path, method):
    train = build_train_spec(method=method, precision="bf16-mixed", micro_batch=2, seq_len=256)
    status, message, out = run_profile(spec_from_config(LLAMA, "tiny-llama"), train, num_gpus=1, steps=3,
                                       device="cuda", out=tmp_path / method, show_progress=False)  # fmt: skip
    assert status == "ok", message
    prof = load_profile(out)
    rank = prof.ranks[0]
    assert prof.device == "cuda" and prof.meta["hardware"]["device_name"]
    peak = rank.peak
    assert sum(peak.by_category.values()) == peak.allocated_bytes
    assert peak.by_category["params"] == rank.identity["param_storage_bytes"]
    cuda = rank.cuda
    # memory_stats per window, peaks reset per window: the steady-state allocated peak the allocator saw
    # is the one the replayed trace finds (both count allocator blocks).
    assert cuda["windows"] and all(w["allocated_peak_bytes"] > 0 for w in cuda["windows"])
    assert cuda["steady_allocated_peak_bytes"] == pytest.approx(peak.allocated_bytes, rel=0.01)
    assert cuda["steady_reserved_peak_bytes"] >= cuda["steady_allocated_peak_bytes"]
    assert "num_alloc_retries" in cuda and cuda["history_note"] == ""
    assert cuda["nvml_num_samples"] > 0, cuda["nvml_note"]
    assert cuda["nvml_steady_peak_used_bytes"] >= cuda["steady_reserved_peak_bytes"]
    with open(out / "snapshot-rank0.pickle", "rb") as f:
        snapshot = pickle.load(f)
    assert snapshot["device_traces"][0], "the allocation history is empty"
    assert (out / "nvml-rank0.parquet").is_file()
