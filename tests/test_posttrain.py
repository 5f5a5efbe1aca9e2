"""--task dpo (issue 21): the spec, the estimator's rules against TRL 1.16's source, and a real DPOTrainer profile.

Independent numbers: TRL's ChunkedLogProbFunction allocates ``mm_buf = torch.empty((min(N, TOKEN_CHUNK_SIZE),
chunk_size))`` with TOKEN_CHUNK_SIZE = 4096 (trl/kernels/chunked_logprob.py) and chunk_size =
_CHUNKED_LOGPROB_CHUNK_SIZE = 32768 (trl/trainer/utils.py), read here from the installed TRL where it is installed;
the reference copy is ``create_model_from_path(..., dtype=self.model.dtype)``: the same parameter count again.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.step import trl_head
from planner.specs import (
    Cluster,
    LoraSpec,
    Method,
    Parallelism,
    Precision,
    Reference,
    Task,
    TaskSpec,
    TrainSpec,
    train_spec_from_dict,
    train_spec_to_dict,
)
from tests.bundle_helpers import tiny_model
from tests.cli_harness import run_inprocess

CPU = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=1)
DPO = TaskSpec(Task.DPO)


def _train(**kw) -> TrainSpec:
    base = dict(method=Method.FULL, precision=Precision.FP32, micro_batch=2, seq_len=24,
                lora=LoraSpec(rank=8, alpha=16, dropout=0.0), task=DPO)
    base.update(kw)
    return TrainSpec(**base)


def _est(**kw):
    return estimate(tiny_model(), _train(**kw), CPU, device="cpu")


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("kw, words", [
    (dict(task=TaskSpec(Task.DPO, Reference.ADAPTER)), "full fine-tuning has none"),
    (dict(parallelism=Parallelism.from_zero(2), task=TaskSpec(Task.DPO, Reference.PRECOMPUTED)),
     "precomputed and DeepSpeed is not modelled"),
    (dict(activation_offload=True), "--activation-offload"),
])
def test_refusals_are_one_sentence(kw, words):
    with pytest.raises(PlannerError, match=words):
        _train(**kw)


def test_sft_takes_no_reference():
    with pytest.raises(PlannerError, match="applies to --task dpo"):
        TaskSpec(Task.SFT, Reference.COPY)


def test_flags_name_the_bad_value():
    with pytest.raises(PlannerError, match="--task 'rlhf' is not valid"):
        TaskSpec.from_flags("rlhf", "auto")
    with pytest.raises(PlannerError, match="--reference 'twin' is not valid"):
        TaskSpec.from_flags("dpo", "twin")


def test_json_round_trip_and_sft_writes_no_task_key():
    train = _train(task=TaskSpec(Task.DPO, Reference.PRECOMPUTED))
    assert train_spec_from_dict(train_spec_to_dict(train)) == train
    assert "task" not in train_spec_to_dict(TrainSpec())  # every earlier plan and golden file reads the same
    assert train_spec_from_dict(train_spec_to_dict(TrainSpec())).task == TaskSpec()


def test_auto_reference_follows_dpotrainer():
    assert DPO.reference_for(peft=False) is Reference.COPY  # create_model_from_path
    assert DPO.reference_for(peft=True) is Reference.ADAPTER  # use_adapter(model, None)
    assert TaskSpec().reference_for(peft=True) is None


# ---------------------------------------------------------------- the estimator


def test_reference_copy_doubles_the_weights_and_nothing_else():
    copy, pre = _est(), _est(task=TaskSpec(Task.DPO, Reference.PRECOMPUTED))
    policy = pre.per_gpu.params_bytes
    assert copy.per_gpu.params_bytes == 2 * policy  # the same parameters in the policy's dtype
    assert copy.per_gpu.optimizer_states_bytes == pre.per_gpu.optimizer_states_bytes
    roles = [(m.role, m.params_bytes) for m in copy.models]
    assert roles == [("policy", policy), ("reference", policy)]
    assert pre.scoring_peak_bytes == 0 and copy.scoring_peak_bytes > 0


def test_adapter_reference_adds_no_weights():
    lora = _est(method=Method.LORA)
    sft = estimate(tiny_model(), _train(method=Method.LORA, task=TaskSpec()), CPU, device="cpu")
    assert lora.per_gpu.params_bytes == sft.per_gpu.params_bytes
    assert lora.models[1].method == "policy with its adapter disabled" and lora.models[1].params_bytes == 0


def test_the_tile_buffer_is_allocated_at_full_width():
    """min(N, 4096) x 32768 columns in the compute dtype, whatever the vocabulary (320 here): the forward peak
    holds it, and the backward's second one."""
    est = _est()
    n = 2 * 2 * (24 - 1)  # chosen and rejected rows, every position but the last scored on the CPU path
    assert est.phases["backward"].temporaries_bytes >= n * 32768 * 4
    assert est.phases["forward"].temporaries_bytes >= n * 32768 * 4


def test_trl_constants_match_the_installed_trl():
    pytest.importorskip("trl")
    from trl.kernels import chunked_logprob
    from trl.trainer import dpo_trainer, utils

    assert trl_head.TOKEN_CHUNK_SIZE == chunked_logprob.TOKEN_CHUNK_SIZE
    assert trl_head.VOCAB_CHUNK_SIZE == utils._CHUNKED_LOGPROB_CHUNK_SIZE
    defaults = {f.name: f.default for f in dataclasses.fields(dpo_trainer.DPOConfig)}
    assert defaults["disable_dropout"] is True  # the estimator's dropout rule


def test_json_row_has_the_model_rows():
    row = _est().row()
    assert row["task"] == {"kind": "dpo", "reference": "auto"}
    assert [m["role"] for m in row["models"]] == ["policy", "reference"]
    assert "task" not in estimate(tiny_model(), dataclasses.replace(_train(), task=TaskSpec()), CPU,
                                  device="cpu").row()


def test_cli_estimate_with_task(tmp_path):
    cfg = tmp_path / "config.json"
    from tests.bundle_helpers import TINY_LLAMA

    cfg.write_text(json.dumps(TINY_LLAMA))
    out = run_inprocess(["estimate", "-m", str(cfg), "--method", "lora", "--zero", "0", "--task", "dpo",
                         "--seq-len", "64", "--json"])
    assert out.code == 0, out.stderr
    (row,) = json.loads(out.stdout)["rows"]
    assert row["models"][1]["method"] == "policy with its adapter disabled"
    bad = run_inprocess(["estimate", "-m", str(cfg), "--method", "full", "--task", "dpo", "--reference", "adapter"])
    assert bad.code == 1 and "full fine-tuning has none" in bad.stderr


# ---------------------------------------------------------------- a real DPOTrainer


@pytest.mark.slow
def test_profiled_dpo_trainer_is_within_the_bounds(tmp_path):
    pytest.importorskip("trl")
    from planner.profile.launcher import run_profile
    from planner.validate.recipe_cells import POSTTRAIN_CELLS
    from planner.validate.run import _measured_from_profile, evaluate

    cell = POSTTRAIN_CELLS[2]  # LoRA, the adapter disabled for the reference
    status, message, path = run_profile(cell.model_spec(), cell.train_spec(), num_gpus=1, steps=3, device="cpu",
                                        out=tmp_path / "prof", show_progress=False)
    assert status == "ok", message
    status, message, measured = _measured_from_profile(path)
    result = evaluate(cell, status, message, measured, source="test", wall_s=None)
    assert not result.violations(), result.violations()


# ---------------------------------------------------------------- --from a TRL DPOConfig


def _from(tmp_path, fields: dict):
    from planner.from_config import read_training_config

    path = tmp_path / "dpo.yaml"
    path.write_text(json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "dtype": "bfloat16",
                                "max_length": 512, **fields}))
    return read_training_config(path)


def test_from_a_dpo_config(tmp_path):
    """DPOConfig's own fields (trl/trainer/dpo_config.py) make the run --task dpo; precompute_ref_log_probs
    leaves the reference out of the step; its list-valued loss_type is DPO's, not SFT's."""
    got = _from(tmp_path, {"beta": 0.1, "loss_type": ["sigmoid"]})
    assert got.train.task == TaskSpec(Task.DPO)
    pre = _from(tmp_path, {"precompute_ref_log_probs": True})
    assert pre.train.task == TaskSpec(Task.DPO, Reference.PRECOMPUTED)
    assert _from(tmp_path, {"packing": False}).train.task == TaskSpec()  # an SFTConfig
    with pytest.raises(PlannerError, match="sync_ref_model"):
        _from(tmp_path, {"beta": 0.1, "sync_ref_model": True})


def test_a_dpo_plan_gets_a_trl_bundle(tmp_path):
    """The SFT bundle's train.py is the HF Trainer on text: a DPO plan gets TRL's DPOTrainer (emit/trl_bundle.py)."""
    from tests.bundle_helpers import TINY_LLAMA

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_LLAMA))
    out = run_inprocess(["recommend", "-m", str(cfg), "--gpus", "1", "-g", "2", "--task", "dpo", "--seq-len", "32",
                         "--out", str(tmp_path / "bundle")])
    assert out.code == 0, out.stderr
    script = (tmp_path / "bundle" / "train.py").read_text()
    assert "DPOTrainer" in script and "'task': 'dpo'" in script
