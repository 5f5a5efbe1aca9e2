"""--task dpo under DeepSpeed ZeRO (issue 21): the policy as the HF Trainer's engine holds it, the reference as TRL
1.16's ``prepare_deepspeed`` makes it (trl/models/utils.py: ZeRO-3 keeps stage 3, so the reference is partitioned;
stages 1 and 2 become stage 0, a whole copy on every rank), and what stays refused.

Independent numbers: the tiny Llama of the DeepSpeed DPO cells (validate/dpo_deepspeed_cells.py) has 164,160
parameters, 656,640 bytes in fp32 (the single-process DPO cells' measured ``params`` without a reference copy,
/tmp/val-native, llama-h64l2v512-full-z0g1-...-dpo-refprecomputed); its five RMSNorm weights of 64 elements are the
only tensors under ZeRO-3's persistence threshold (10 x 64), 1,280 bytes. ``planner profile`` of the ZeRO-3 cell
(2 ranks, gloo) measured ``params`` 659,200 bytes per rank (the policy's and the reference's halves and their
norms) and ``optimizer_states`` 984,964 (three fp32 halves).
"""

from __future__ import annotations

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.specs import Cluster, GrpoSpec, Offload, Parallelism, Reference, Task, TaskSpec
from planner.validate.dpo_deepspeed_cells import DPO_DEEPSPEED_CELLS

TWO = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)
FULL_PARAMS_BYTES = 656_640
NORMS_BYTES = 5 * 64 * 4


def _est(cell, **kw):
    return estimate(cell.model_spec(), cell.train_spec(), TWO, device="cpu", allow_longer=True, **kw)


def test_zero2_reference_is_a_whole_copy_at_stage_0():
    est = _est(DPO_DEEPSPEED_CELLS[0])
    policy, ref = est.models
    assert ref.params_bytes == FULL_PARAMS_BYTES
    assert "stage 0" in ref.sharding and "ZeRO-2" in policy.sharding
    # ZeRO-2 leaves the policy's fp32 weights whole: two copies of the model per rank
    assert est.per_gpu.params_bytes == 2 * FULL_PARAMS_BYTES


def test_zero3_reference_is_partitioned_like_the_policy():
    est = _est(DPO_DEEPSPEED_CELLS[1])
    policy, ref = est.models
    assert ref.params_bytes == FULL_PARAMS_BYTES // 2 + NORMS_BYTES
    assert "ZeRO-3 inference engine" in ref.sharding
    assert est.per_gpu.params_bytes == 659_200  # measured (module docstring)
    # fp32 ZeRO-3 clones its flat partition for the optimizer (stage3.py _create_fp32_partitions): three halves
    assert est.per_gpu.optimizer_states_bytes == 3 * FULL_PARAMS_BYTES // 2


def test_lora_adapter_reference_adds_no_model():
    est = _est(DPO_DEEPSPEED_CELLS[2])
    assert est.models[1].params_bytes == 0 and "disables the policy's LoRA adapter" in " ".join(est.notes)


def test_notes_say_what_is_modelled():
    notes = " ".join(_est(DPO_DEEPSPEED_CELLS[1]).notes)
    assert "partitioned by TRL's prepare_deepspeed" in notes and "not modelled" in notes


@pytest.mark.parametrize("change, words", [
    (dict(task=TaskSpec(Task.GRPO, grpo=GrpoSpec(num_generations=2, completion_len=16))),
     "--task grpo with DeepSpeed is not modelled"),
    (dict(task=TaskSpec(Task.DPO, Reference.PRECOMPUTED)), "precomputed and DeepSpeed"),
    (dict(parallelism=Parallelism.from_zero(2, Offload.OPTIMIZER)), "offload is not modelled"),
])
def test_what_is_not_modelled_is_refused_in_one_sentence(change, words):
    import dataclasses

    train = DPO_DEEPSPEED_CELLS[0].train_spec()
    with pytest.raises(PlannerError, match=words):
        dataclasses.replace(train, **change)


@pytest.mark.slow
@pytest.mark.parametrize("cell", DPO_DEEPSPEED_CELLS[1:2], ids=["zero3-copy"])
def test_profiled_dpo_trainer_under_zero3_is_within_the_bounds(tmp_path, cell):
    pytest.importorskip("trl")
    from planner.profile.launcher import run_profile
    from planner.validate.run import _measured_from_profile, evaluate

    status, message, path = run_profile(cell.model_spec(), cell.train_spec(), num_gpus=2, steps=3, device="cpu",
                                        out=tmp_path / "prof", show_progress=False)
    assert status == "ok", message
    status, message, measured = _measured_from_profile(path)
    result = evaluate(cell, status, message, measured, source="test", wall_s=None)
    assert not result.violations(), result.violations()
