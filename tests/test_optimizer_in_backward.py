"""--optimizer-in-backward (issue 16 item 2; torchtune's optimizer_in_bwd): each parameter's own optimizer stepped
in its post-accumulate-grad hook, its gradient freed there, so the gradients are never all alive.

The simulated step against what the rule means (tape._step_in_hook): at the backward peak at most the gradients
of the node being run exist, the optimizer step after backward holds no gradients and no scratch, and the foreach
AdamW scratch of one hook is one parameter's second moment, not all of them. The CPU cells
(validate/recipe_cells.py OPTIM_IN_BACKWARD_CELLS) check it against the real hooks and torch optimizers, the
bundle test (tests/test_profile_command.py) through the HF Trainer.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.step.simulate import simulate_step
from planner.models import load_model, spec_from_config
from planner.specs import (
    Cluster,
    LoraSpec,
    Method,
    Optimizer,
    Parallelism,
    Precision,
    TrainSpec,
    train_spec_from_dict,
)
from planner.specs.train import train_spec_to_dict

TINY = spec_from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 512,
                         "max_position_embeddings": 256}, "tiny-llama")
IN_BWD = TrainSpec(precision=Precision.BF16, micro_batch=1, seq_len=512, optimizer_in_backward=True)
H100 = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=1)


@pytest.mark.parametrize("changes, words", [
    (dict(parallelism=Parallelism.from_zero(2)), "use --zero 0"),
    (dict(method=Method.LORA, lora=LoraSpec()), "full fine-tuning"),
    (dict(grad_accum=2), "--grad-accum 1"),
    (dict(precision=Precision.BF16_MIXED), "fp32 master weights"),
    (dict(optimizer=Optimizer.ADAMW_8BIT), "adamw, adamw-fused and sgd"),
])
def test_refuses_what_no_library_runs(changes, words):
    with pytest.raises(PlannerError, match=words):
        dataclasses.replace(IN_BWD, **changes)


def test_one_gpu_only():
    with pytest.raises(PlannerError, match="--gpus 1"):
        estimate(TINY, IN_BWD, Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=2))


def test_json_round_trip_and_flag():
    from planner.cli.option_types import OptimizerInBackwardOpt

    assert train_spec_to_dict(IN_BWD)["optimizer_in_backward"] is True
    assert train_spec_from_dict(train_spec_to_dict(IN_BWD)) == IN_BWD
    info = OptimizerInBackwardOpt.__metadata__[0]
    assert "--optimizer-in-backward" in info.default and "optimizer_in_bwd" in info.help


def test_gradients_are_never_all_alive():
    off = dataclasses.replace(IN_BWD, optimizer_in_backward=False)
    step_on, step_off = simulate_step(TINY, IN_BWD), simulate_step(TINY, off)
    largest = 512 * 64 * 2  # the embedding's bf16 gradient, the largest parameter
    assert step_on.backward_peak_grads_bytes <= largest < step_off.grads_bytes  # all of them at its end
    model = load_model("llama-3.2-1b")
    on, plain = estimate(model, IN_BWD, H100), estimate(model, off, H100)
    assert plain.peak_phase == "optimizer_step" and on.peak_phase == "backward"
    step = on.phases["optimizer_step"]  # a no-op after backward: no gradients, no scratch
    assert (step.grads_bytes, step.temporaries_bytes) == (0, 0)
    # every gradient of the step gone: at most the largest tensor's gradient at the backward peak
    assert on.per_gpu.grads_bytes <= model.vocab_size * model.hidden_size * 2
    assert on.per_gpu.total_bytes < plain.per_gpu.total_bytes - plain.per_gpu.grads_bytes // 2


def test_foreach_scratch_is_one_tensor_at_a_time():
    """Without the hooks foreach AdamW's sqrt copy covers every moment at once (2 bytes per parameter in pure
    bf16); in a hook it covers one tensor's: the backward peak grows by at most the largest tensor's."""
    on = simulate_step(TINY, IN_BWD)
    fused = simulate_step(TINY, dataclasses.replace(IN_BWD, optimizer=Optimizer.ADAMW_FUSED))
    assert 0 <= on.backward_peak_bytes - fused.backward_peak_bytes <= 512 * 64 * 2
