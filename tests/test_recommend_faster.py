"""recommend's loss knobs when a plan already fits (issue 16: "it may pick chunked loss ... when they let a plan fit
or run faster, and says why"; planner/plan/faster.py): a loss that never holds the whole fp32 logits is taken when
it frees the memory for a layout whose modelled tokens/s per GPU is at least faster.MIN_SPEEDUP higher."""

from __future__ import annotations

import dataclasses

from planner import catalog
from planner.models import load_model
from planner.plan import faster
from planner.plan.recommend import recommend
from planner.specs import Cluster, Loss, LossSpec, Method, TrainSpec

# Llama 3.2 3B full fine-tuning at 8k tokens on 8 x A100 40 GB: with the standard loss the fastest plan that fits
# needs activation checkpointing; without the [8k, 128k] fp32 logits (and their gradient) ZeRO-3 with the
# optimizer offloaded fits without it, which recomputes no forward
MODEL = "llama-3.2-3b"
BASE = TrainSpec(method=Method.FULL, seq_len=8192)


def _rec(model=None, **kw):
    return recommend(model or load_model(MODEL), BASE, Cluster(catalog.gpu("a100-sxm-40gb"), 8), global_batch_size=64,
                     method="full", **kw)


def test_a_faster_loss_is_taken_and_said():
    model = load_model(MODEL)
    asked, rec = _rec(model), _rec(model, recipes=True)
    assert asked.plan.train.loss.kind is Loss.STANDARD and asked.plan.train.grad_checkpointing
    t = rec.plan.train
    assert t.loss.kind in (Loss.CHUNKED_CE, Loss.FUSED_LINEAR_CE) and t.method is Method.FULL
    assert not t.grad_checkpointing
    speed, asked_speed = (r.estimate.throughput.tokens_per_s_per_gpu for r in (rec, asked))
    assert speed >= asked_speed * (1 + faster.MIN_SPEEDUP)
    assert rec.why[0].startswith(f"--loss {t.loss.kind.value} makes the plan faster")
    assert "no activation checkpointing" in rec.why[0] and rec.why[0] in rec.estimate.notes
    # the plan as asked is the first runner-up, as recommend without the knobs chose it
    assert rec.runners_up[0].plan == asked.plan and "as asked" in rec.runners_up[0].reason
    assert rec.estimate.device_bytes <= int(rec.plan.cluster.gpu.capacity_bytes * 0.9)


def test_a_typed_loss_is_kept():
    model = load_model(MODEL)
    assert _rec(model, recipes=True, fixed_knobs=frozenset({"loss"})).plan == _rec(model).plan


def test_no_faster_layout_changes_nothing_and_costs_no_estimate():
    # Llama 3.2 1B full on one A100 80 GB at 4k: ZeRO-0 without checkpointing already fits, no bound is faster
    model = load_model("llama-3.2-1b")
    kw = dict(global_batch_size=16, method="full")
    cluster = Cluster(catalog.gpu("a100-sxm-80gb"), 1)
    base = TrainSpec(seq_len=4096)
    asked, rec = recommend(model, base, cluster, **kw), recommend(model, base, cluster, recipes=True, **kw)
    assert rec.plan == asked.plan and rec.why == asked.why and rec.num_estimates == asked.num_estimates


def test_variants_skip_a_typed_loss_and_other_tasks():
    assert [k[0] for _, k in faster.variants(BASE)] == ["--loss chunked-ce", "--loss fused-linear-ce"]
    assert faster.variants(BASE, frozenset({"loss"})) == []
    assert faster.variants(dataclasses.replace(BASE, loss=LossSpec(Loss.CHUNKED_CE))) == []


def test_the_bundle_runs_the_faster_loss():
    from planner.emit import render_bundle

    rec = _rec(recipes=True)
    files = render_bundle(rec.plan.model, rec.plan.train, rec.plan.cluster, rec.estimate,
                          global_batch_size=rec.plan.global_batch_size)
    assert f"'kind': '{rec.plan.train.loss.kind.value}'" in files["train.py"]
