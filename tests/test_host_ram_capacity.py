"""Issue 14 item 15: host RAM per node under offload (--host-ram) and the GPU's CUDA-visible capacity in `fits`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from planner import catalog
from planner.estimate.core import estimate
from planner.estimate.count.params import count_params, split_params
from planner.estimate.host_ram import host_ram_per_rank, pinned_size
from planner.estimate.sharding import shard_states
from planner.estimate.states import unsharded_states
from planner.models import load_model
from planner.plan.fits import estimate_with_fit
from planner.specs import Cluster, Offload, Parallelism, Precision, TrainSpec
from tests.conftest import run_cli

GIB = 2**30
H100 = catalog.gpu("h100-sxm-80gb")


def _train(**kw) -> TrainSpec:
    base = dict(precision=Precision.BF16_MIXED, seq_len=1024, micro_batch=1)
    base.update(kw)
    return TrainSpec(**base)


def test_pinned_buffers_round_up_to_a_power_of_two():
    # PyTorch's CachingHostAllocator: roundSize = PowerOf2Ceil(size)
    assert [pinned_size(n) for n in (0, 1, 3, 4, 5, 2**30, 2**30 + 1)] == [0, 1, 4, 4, 8, 2**30, 2**31]


def test_host_ram_covers_the_offloaded_states_and_pinned_buffers():
    """The host figure holds at least ZeRO's offloaded states (sharding.py, checked against DeepSpeed's own
    estimator) and adds DeepSpeed's pinned buffers: ZeRO-2 with 8 ranks pins the fp32 master and gradient
    partitions, a 16-bit copy and the largest tensor's gradient, each rounded up to a power of two."""
    model = load_model("llama-3.1-8b")
    counts = count_params(model)
    train = _train(parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER))
    states = unsharded_states(counts, split_params(counts, train), train)
    sharded = shard_states(states, train, 8, counts.largest_module)
    host = host_ram_per_rank(states, train, 8, largest_param_numel=counts.largest_module, params_partition_bytes=0)
    n = math.ceil(states.num_trainable / 8)
    assert host.pinned_requested_bytes == 4 * n + 4 * n + 2 * n + 2 * counts.largest_module
    assert host.pinned_bytes == 2 * pinned_size(4 * n) + pinned_size(2 * n) + pinned_size(2 * counts.largest_module)
    assert host.pageable_bytes == 8 * n  # DeepSpeedCPUAdam's two fp32 moments
    assert host.total_bytes > sharded.cpu_bytes
    # without CUDA nothing is pinned, nothing rounded
    cpu = host_ram_per_rank(states, train, 8, largest_param_numel=counts.largest_module, params_partition_bytes=0,
                            device="cpu")
    assert (cpu.pinned_bytes, cpu.total_bytes) == (0, host.pageable_bytes + host.pinned_requested_bytes)


def test_an_offload_row_that_needs_more_host_ram_than_the_node_has_does_not_fit():
    """Before: `fits` looked at the GPU only, so an 8B ZeRO-2 optimizer-offload row on 8 H100s fitted with any
    host. Its offload needs far more than 64 GiB per node: it does not fit, says why, and fits nothing."""
    model = load_model("llama-3.1-8b")
    train = _train(parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER))
    est = estimate_with_fit(model, train, Cluster(gpu=H100, num_gpus=8, host_memory_bytes_per_node=64 * GIB))
    assert est.gpu_fits and est.cpu_bytes_per_node > 64 * GIB
    assert est.host_fits is False and not est.fits
    assert "host RAM" in est.fit_reason and "64.0 GiB" in est.fit_reason
    assert (est.fit.max_micro_batch, est.fit.max_seq_len) == (0, 0)
    big = estimate(model, train, Cluster(gpu=H100, num_gpus=8, host_memory_bytes_per_node=4096 * GIB))
    assert big.host_fits is True and big.fits
    unknown = estimate(model, train, Cluster(gpu=H100, num_gpus=8))
    assert unknown.host_fits is None and unknown.fits
    assert any("not checked" in n and "--host-ram" in n for n in unknown.notes)
    # rows without offload need no host RAM for states: nothing to check
    plain = estimate(model, _train(parallelism=Parallelism.from_zero(3)), Cluster(gpu=H100, num_gpus=8, host_memory_bytes_per_node=0))
    assert plain.cpu_bytes_per_node == 0 and plain.host_fits is None


def test_estimate_cli_host_ram_flag():
    res = run_cli("estimate", "-m", "llama-3.1-8b", "--gpus", "8", "--method", "full", "--zero", "2",
                   "--offload", "optimizer", "--seq-len", "1024", "--host-ram", "64", "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    (row,) = payload["rows"]
    assert payload["cluster"]["host_memory_bytes_per_node"] == 64 * GIB
    assert row["fits"] is False and row["host_fits"] is False and row["gpu_fits"] is True
    assert row["host_ram_bytes_per_node"] == 64 * GIB and row["cpu_bytes_per_node"] > 64 * GIB
    assert "host RAM" in row["fit_reason"]
    text = run_cli("estimate", "-m", "llama-3.1-8b", "--gpus", "8", "--method", "full", "--zero", "2",
                    "--offload", "optimizer", "--seq-len", "1024", "--host-ram", "64")
    assert text.returncode == 0, text.stderr
    assert "no (host)" in text.stdout and "does not fit: " in text.stdout


def test_recommend_keeps_host_ram_gib_as_an_alias():
    args = ["recommend", "-m", "gpt2", "-s", "512", "-g", "8", "--gpus", "1", "--json"]
    for flag in ("--host-ram", "--host-ram-gib"):
        res = run_cli(*args, flag, "64")
        assert res.returncode == 0, res.stderr
    bad = run_cli(*args, "--host-ram", "-1")
    assert bad.returncode != 0 and "--host-ram" in bad.stderr


def test_every_catalog_gpu_has_a_cuda_visible_capacity_with_its_source():
    for gpu in catalog.gpus():
        assert gpu.usable_memory_bytes is not None, gpu.name
        assert 0.9 * gpu.memory_bytes < gpu.usable_memory_bytes < gpu.memory_bytes, gpu.name
        assert gpu.capacity_bytes == gpu.usable_memory_bytes
        assert len(gpu.usable_memory_source) > 40, gpu.name
    rec = {r["name"]: r for r in catalog.gpu_records()}
    for name, r in rec.items():
        derived = r["usable_memory_source"].startswith("derived")
        assert r["usable_memory_confirmed"] is not derived, name
    # H100 SXM: CUDA deviceQuery's total (github.com/thamada/nvidia-smi)
    assert H100.usable_memory_bytes == 85_045_477_376
    res = run_cli("gpus", "--json")
    listed = {g["name"]: g for g in json.loads(res.stdout)}
    assert listed["h100-sxm-80gb"]["memory_bytes"] == 80 * GIB
    assert listed["h100-sxm-80gb"]["usable_memory_bytes"] == 85_045_477_376
    assert "thamada/nvidia-smi" in listed["h100-sxm-80gb"]["usable_memory_source"]


def test_a_peak_between_the_cuda_visible_and_the_nominal_capacity_does_not_fit():
    """Before: fits compared with the nominal 80 GiB. A device peak above the CUDA-visible 79.2 GiB (after the
    margin) but within the nominal size fitted; it does not any more."""
    model = load_model("llama-3.1-8b")
    train = _train(parallelism=Parallelism.from_zero(3))
    cluster = Cluster(gpu=H100, num_gpus=8)
    device = estimate(model, train, cluster, margin=0.0).device_bytes
    margin = 1.0 - (device + 2**20) / H100.memory_bytes  # the nominal size minus this margin holds the peak
    est = estimate_with_fit(model, train, cluster, margin=margin)
    assert int(H100.memory_bytes * (1 - margin)) >= device > est.usable_bytes
    assert not est.fits and est.capacity_bytes == H100.usable_memory_bytes
    assert "CUDA-visible" in est.fit_reason
    assert est.fit.max_micro_batch == 0  # the fit search uses the same capacity
    nominal = dataclasses.replace(H100, usable_memory_bytes=None)
    assert estimate(model, train, Cluster(gpu=nominal, num_gpus=8), margin=margin).fits


def test_the_estimator_does_not_import_the_fit_search():
    """Issue 15: fits.py and core.py imported each other behind function-level imports; the fit search now
    lives in planner/plan (tests/test_architecture.py checks every arrow) and estimate() never calls it."""
    source = (Path(__file__).parents[1] / "planner" / "estimate" / "core.py").read_text()
    assert "planner.plan" not in source


@pytest.mark.parametrize("offload", [Offload.OPTIMIZER, Offload.OPTIMIZER_PARAMS])
def test_zero3_host_ram_counts_the_sub_group_gradient_buffers(offload):
    model = load_model("llama-3.1-8b")
    est = estimate(model, _train(parallelism=Parallelism.from_zero(3, offload)), Cluster(gpu=H100, num_gpus=8))
    counts = count_params(model)
    train = _train(parallelism=Parallelism.from_zero(3, offload))
    states = unsharded_states(counts, split_params(counts, train), train)
    n = math.ceil(states.num_trainable / 8)
    # moments + fp32 master (pageable), the bf16 gradient partition (stage3.py grad_partitions_flat_buffer in
    # gradient_accumulation_dtype, the model's) + per-sub-group fp32 gradients (pinned)
    assert est.cpu_bytes_per_node >= 8 * (8 * n + 4 * n + 2 * n + 4 * n)
    assert est.cpu_pinned_bytes_per_node >= 8 * (2 * n + 4 * n)
