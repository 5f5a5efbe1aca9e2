"""--precision bf16-base-autocast (issue 16): LoRA on a bf16 base with peft's fp32 adapters under the HF Trainer's
bf16 autocast (accelerate's prepare_model wraps the forward in torch.autocast whatever the weights' dtype). What it
refuses, that it is not bf16-mixed LoRA (peft's fp32 copy of each adapter input is cast back to bf16 and saved in
bf16, not fp32), and that the bundle loads the base in bf16 and sets bf16=True. Its memory is checked by the two
BASE_AUTOCAST_CELLS of the full validation matrix."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.models import load_model
from planner.specs import Cluster, Method, Precision, TrainSpec


def _spec(**kw):
    return TrainSpec(**{"method": Method.LORA, "precision": Precision.BF16_BASE_AUTOCAST, "seq_len": 1024, **kw})


def test_the_recipe():
    p = Precision("bf16-base-autocast")
    assert (p.compute_dtype, p.autocast_dtype, p.has_master_weights) == ("bf16", "bf16", False)


@pytest.mark.parametrize("method", [Method.FULL, Method.QLORA])
def test_lora_only(method):
    with pytest.raises(PlannerError, match="modelled for LoRA"):
        _spec(method=method)


def test_lower_than_bf16_mixed_lora_by_the_adapter_inputs():
    model, cluster = load_model("llama-3.2-1b"), Cluster(catalog.gpu("h100-sxm-80gb"), 1)
    base = estimate(model, _spec(), cluster)
    mixed = estimate(model, _spec(precision=Precision.BF16_MIXED), cluster)
    # the same weights, adapters and states; the saved adapter inputs are bf16 instead of fp32
    assert base.device_bytes < mixed.device_bytes


def test_the_bundle_loads_bf16_and_autocasts():
    from planner.emit import render_bundle

    model, cluster = load_model("llama-3.2-1b"), Cluster(catalog.gpu("h100-sxm-80gb"), 1)
    t = _spec()
    files = render_bundle(model, t, cluster, estimate(model, t, cluster), global_batch_size=t.micro_batch * t.grad_accum)
    assert "'precision': 'bf16-base-autocast'" in files["train.py"]


def test_a_bf16_mixed_lora_bundle_says_it_runs_this_recipe():
    # train.py sets bf16=True for bf16-mixed LoRA without DeepSpeed, and accelerate then autocasts the bf16 base
    from planner.emit import render_bundle

    model, cluster = load_model("llama-3.2-1b"), Cluster(catalog.gpu("h100-sxm-80gb"), 1)
    t = _spec(precision=Precision.BF16_MIXED)
    files = render_bundle(model, t, cluster, estimate(model, t, cluster), global_batch_size=t.micro_batch * t.grad_accum)
    assert "--precision bf16-base-autocast` estimates" in files["PLAN.md"]
