"""DeepSpeed's overlap_comm in the step-time model (issue 22 item 1: overlap as each engine does it).

The exposure rules follow the installed DeepSpeed 0.19.8: ZeRO-1/2 reduce IPG buckets on ``reduction_stream``
during backward only with ``overlap_comm`` (stage_1_and_2.py ``average_tensor``), ZeRO-3 all-gathers on its own
stream always (parameter_offload.py) and reduce-scatters on a side stream only with ``overlap_comm``
(stage3.py ``reduce_and_partition_stream``). Expected values are computed here from the step's own parts.
"""

from __future__ import annotations

import pytest

from planner import catalog
from planner.estimate.count.params import count_params, split_params
from planner.estimate.throughput import step_time
from planner.estimate.traffic import collective_bytes_per_s, communication_bytes, reduction_bytes
from planner.models import load_model
from planner.specs import Cluster, Parallelism, TrainSpec
from planner.specs.parallelism import ZeroConfig

REL = 1e-9
H100 = catalog.gpu("h100-sxm-80gb")
CLUSTER = Cluster(H100, 8, 1)


def _train(stage: int, overlap: bool | None, accum: int = 1) -> TrainSpec:
    zc = ZeroConfig(overlap_comm=overlap)
    return TrainSpec(parallelism=Parallelism.from_zero(stage, zero_config=zc), seq_len=4096, micro_batch=4,
                     grad_accum=accum)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_default_overlap_is_deepspeeds(stage):
    """overlap_comm unset = DeepSpeed's default (stage 3 only): the same step as saying it."""
    model = load_model("llama-3.1-8b")
    unset = step_time(model, _train(stage, None), CLUSTER)
    said = step_time(model, _train(stage, stage == 3), CLUSTER)
    assert unset == said


@pytest.mark.parametrize("stage,accum", [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_zero12_overlap_hides_the_reductions_not_the_gather(stage, accum):
    model = load_model("llama-3.1-8b")
    off = step_time(model, _train(stage, False, accum), CLUSTER)
    on = step_time(model, _train(stage, True, accum), CLUSTER)
    assert off.exposed_communication_s == off.communication_s
    counts = count_params(model)
    split = split_params(counts, _train(stage, True, accum))
    reduce_s = reduction_bytes(_train(stage, True, accum), split, 8, accum) / collective_bytes_per_s(CLUSTER)
    # 8B on 8 H100s with 16k tokens per micro-batch: each reduction hides behind its backward but one layer's
    assert on.exposed_communication_s == pytest.approx(
        reduce_s / model.num_layers + (on.communication_s - reduce_s), rel=REL)
    # the all-gather of the updated parameters stays exposed either way
    assert on.communication_s - reduce_s == pytest.approx(off.communication_s - reduce_s, rel=REL)
    assert on.total_s < off.total_s


def test_zero3_without_overlap_exposes_the_reduce_scatters():
    model = load_model("llama-3.1-8b")
    on = step_time(model, _train(3, True, 2), CLUSTER)
    off = step_time(model, _train(3, False, 2), CLUSTER)
    counts = count_params(model)
    train = _train(3, False, 2)
    split = split_params(counts, train)
    link = collective_bytes_per_s(CLUSTER)
    reduce_s = reduction_bytes(train, split, 8, 2) / link
    gather_s = communication_bytes(train, split, 8, 2) / link - reduce_s
    assert gather_s == pytest.approx(2 * reduce_s, rel=REL)  # full fine-tuning: gathers twice what it reduces
    assert off.exposed_communication_s == pytest.approx(2 * gather_s / 2 / model.num_layers + reduce_s, rel=REL)
    assert on.exposed_communication_s == pytest.approx(on.communication_s / model.num_layers, rel=REL)
    assert off.total_s > on.total_s
