"""compare_gpus estimates each run once for every GPU type with the same memory (EstimateCache, memory_key):
that is exact only while an estimate reads nothing else from the GPU than its capacity and bf16 support.
These tests fail when a memory rule comes to depend on the GPU type; add what it reads to memory_key."""

from __future__ import annotations

import dataclasses

import pytest

from planner import catalog
from planner.estimate.core import estimate
from planner.models import load_model
from planner.plan import estimate_cache as cg
from planner.plan.compare_gpus import cluster_for, compare_gpus, precision_for
from planner.plan.estimate_cache import memory_key
from planner.specs import LoraSpec, Method, Offload, Parallelism, TrainSpec

TRAINS = [
    TrainSpec(parallelism=Parallelism.from_zero(3), seq_len=2048),
    TrainSpec(parallelism=Parallelism.from_zero(1), micro_batch=2, seq_len=1024, grad_checkpointing=True),
    TrainSpec(method=Method.LORA, lora=LoraSpec(dropout=0.0), parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER), seq_len=2048),
    TrainSpec(method=Method.QLORA, lora=LoraSpec(dropout=0.0), parallelism=Parallelism.from_zero(0), seq_len=4096),
]


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-30b-a3b"])
def test_an_estimate_is_the_same_on_every_gpu_of_the_same_memory_key(name):
    model = load_model(name)
    for base in TRAINS:
        for n in (1, 8, 16):
            first: dict[tuple, object] = {}
            for gpu in catalog.gpus():
                train = dataclasses.replace(base, precision=precision_for(gpu, base.precision))
                cluster = cluster_for(gpu, n)
                est = estimate(model, train, cluster)
                key = memory_key(train, cluster)
                if key not in first:
                    first[key] = est
                    continue
                shared = dataclasses.replace(first[key], cluster=cluster, capacity_bytes=gpu.capacity_bytes)
                assert shared == est, (name, base, n, gpu.name)


def test_sharing_estimates_across_gpus_changes_no_row(monkeypatch):
    model = load_model("llama-3.1-70b")
    train = TrainSpec(seq_len=4096)
    shared = [r.to_dict() for r in compare_gpus(model, train, num_tokens=10**9)]
    monkeypatch.setattr(cg, "memory_key", lambda t, c: (t, c))  # every GPU type estimated on its own
    assert [r.to_dict() for r in compare_gpus(model, train, num_tokens=10**9)] == shared
