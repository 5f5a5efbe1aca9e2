"""FSDP2's step moments (estimate/fsdp2_step.py, issue 18) against the measured peaks of three validation cells
(validate/fsdp2_cells.py), profiled with `planner profile --engine fsdp2` (2 ranks over gloo, torch 2.13) on
an AVX-512 Xeon, the same figures on the AVX2 path: rank 0's peak by category, less the 1,088 bytes of `other`
(inputs and setup) the estimator does not count."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.estimate.core import estimate
from planner.specs import Cluster
from planner.validate.fsdp2_cells import FSDP2_CELLS


def _peak(index: int):
    cell = FSDP2_CELLS[index]
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
    est = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", allow_longer=True, rank=0, cpu=None)
    return est.per_gpu


def test_the_roots_reduce_scatter_holds_the_output_heads_unsharded_gradient():
    # full Llama, bf16 policy, checkpointing: the peak is the root's reduce-scatter in the final callback, where
    # foreach_reduce's loop variable still holds lm_head's bf16 gradient (1000 x 96 x 2 = 192,000 bytes) beside
    # the fp32 reduce-scatter input (768,384) and gloo's copy of it; every sharded gradient exists
    p = _peak(2)
    assert p.grads_bytes == 975_168  # measured
    assert p.temporaries_bytes == pytest.approx(1_728_796, abs=64)  # measured 1,728,796
    assert p.activations_bytes == 0  # measured 4 (the loss)


def test_fp32_without_a_policy_peaks_at_the_top_layers_pre_backward_all_gather():
    # fp32, no MixedPrecisionPolicy: as the top layer's backward begins its parameters are copied out of the
    # all-gather and the next layer's all-gather runs (its flat output and gloo's copy of it, 393,984 bytes each)
    # with the root gathered, lm_head's fp32 gradient and every layer's activations alive
    p = _peak(4)
    assert p.activations_bytes == pytest.approx(2_871_300, abs=64)  # measured
    assert p.temporaries_bytes == pytest.approx(2_383_888, abs=64)  # measured


def test_no_reshard_with_checkpointing_is_no_longer_under_the_measured_peak():
    # GPT-2 fp32, reshard_after_forward False, checkpointing: the bottom layer's recomputation with the root and
    # that layer gathered (the top one resharded after its backward) and the top layer's reduce-scatter input
    # and sharded gradients: measured 3,420,644 bytes (3,419,620 without `other`), estimated within the bounds
    p = _peak(11)
    assert p.grads_bytes == 99_968  # measured: the top layer's sharded gradients
    assert p.activations_bytes == pytest.approx(1_285_604, abs=64)  # measured
    assert 0 <= p.total_bytes - 3_419_620 <= 0.02 * 3_420_644


def _hsdp_peak(index: int):
    from planner.validate.hsdp_cells import HSDP_CELLS

    cell = HSDP_CELLS[index]
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
    return estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", allow_longer=True, rank=0,
                    cpu=None).per_gpu


def test_a_layers_backward_holds_the_previous_layers_prefetched_all_gather_without_checkpointing():
    # GPT-2 fp32 HSDP 2 x 2, no checkpointing: measured (same bytes on the Xeon, the EPYC and the AVX2 path) at
    # the top layer's backward, after its pre_backward's _backward_prefetch unsharded layer 0 (its flat
    # all-gather output, 199,936 bytes, alive until layer 0's own copy-out): activations 2,626,116, temporaries
    # 1,187,608, peak 4,661,196. The top layer's entry (every activation) is not the peak
    p = _hsdp_peak(3)
    assert p.activations_bytes == pytest.approx(2_626_116, abs=1024)
    assert abs(p.temporaries_bytes - 1_187_608) <= 0.02 * 4_661_196
    assert 0 <= p.total_bytes - (4_661_196 - 1_024) <= 0.02 * 4_661_196


def test_a_checkpointed_layers_recomputation_has_its_own_neighbours_only():
    # LoRA Llama, checkpointing, AVX2 path (no oneDNN): the peak is layer 1's recomputation with layer 0's
    # prefetched all-gather and the top layer's reduce-scatter input and sharded gradients (grads 27,136),
    # activations 868,844 and temporaries 1,080,256 measured: not the top layer's recomputation (896,320 bytes
    # of activations) with layer 1's neighbours, which no moment holds
    p = _peak(8)
    assert p.grads_bytes == 27_136  # measured
    assert p.activations_bytes == pytest.approx(868_844, abs=4096)
    assert p.total_bytes == pytest.approx(3_196_884 - 1_088, rel=0.002)

