"""recommend's recipe knobs (issue 16 acceptance; planner/plan/recipes.py): when nothing fits with the recipe asked
for, the memory-saving knobs the user did not type are tried, and the one chosen is said in ``why``, the estimate's
notes and the bundle."""

from __future__ import annotations

import pytest

from planner import catalog
from planner.models import load_model
from planner.plan import recipes
from planner.plan.recommend import NoPlanFits, recommend
from planner.specs import Cluster, Loss, Method, Optimizer, TrainSpec

# Llama 3.2 1B LoRA at 16k tokens on one 24 GB L4: the standard loss's fp32 [16k, 128k] logits do not fit
MODEL = "llama-3.2-1b"
BASE = TrainSpec(method=Method.LORA, seq_len=16384)


def _rec(**kw):
    return recommend(load_model(MODEL), BASE, Cluster(catalog.gpu("l4-24gb"), 1), global_batch_size=8,
                     method="lora", allow_longer=True, **kw)


def test_variants_least_intrusive_first_and_typed_flags_kept():
    names = [tuple(k[0] for k in knobs) for _, knobs in recipes.variants(BASE)]
    assert names[:3] == [("--loss chunked-ce",), ("--activation-offload",), ("--optimizer adamw-8bit",)]
    assert all("--loss chunked-ce" not in n for n in
               [tuple(k[0] for k in knobs) for _, knobs in recipes.variants(BASE, frozenset({"loss"}))])
    assert all("--activation-offload" not in n for n in
               [tuple(k[0] for k in knobs) for _, knobs in recipes.variants(BASE, host_ram_known=False)])
    # a knob the spec refuses for the base is skipped: optimizer-in-backward is full fine-tuning only
    assert all("--optimizer-in-backward" not in n for n in
               [tuple(k[0] for k in knobs) for _, knobs in recipes.variants(BASE)])


def test_nothing_fits_as_asked_and_chunked_loss_makes_it_fit():
    with pytest.raises(NoPlanFits):
        _rec()
    rec = _rec(recipes=True)
    t = rec.plan.train
    assert t.loss.kind is Loss.CHUNKED_CE and t.optimizer is Optimizer.ADAMW and not t.activation_offload
    assert rec.why[0].startswith("Nothing fits with the recipe asked for") and "--loss chunked-ce" in rec.why[0]
    assert rec.why[0] in rec.estimate.notes
    usable = int(rec.plan.cluster.gpu.capacity_bytes * 0.9)
    assert rec.estimate.device_bytes <= usable


def test_a_typed_loss_is_kept():
    # the logits are what does not fit: with the loss typed (and no --host-ram for activation offloading), 8-bit
    # AdamW on LoRA's small states does not help, and nothing fits
    with pytest.raises(NoPlanFits):
        _rec(recipes=True, fixed_knobs=frozenset({"loss"}))


def test_the_bundle_runs_the_chosen_knob():
    from planner.emit import render_bundle

    rec = _rec(recipes=True)
    files = render_bundle(rec.plan.model, rec.plan.train, rec.plan.cluster, rec.estimate,
                          global_batch_size=rec.plan.global_batch_size)
    assert "'kind': 'chunked-ce'" in files["train.py"]


def test_the_cli_flag(tmp_path):
    from typer.testing import CliRunner

    from planner.cli.app import build_app

    args = ["recommend", "-m", MODEL, "--gpus", "1", "--gpu", "l4-24gb", "-g", "8", "--seq-len", "16384",
            "--method", "lora", "--allow-longer", "--json"]
    app = build_app(["recommend"])
    off = CliRunner().invoke(app, args + ["--no-recipes"])
    assert off.exit_code == 1
    on = CliRunner().invoke(app, args)
    assert on.exit_code == 0, on.output
    assert '"chunked-ce"' in on.stdout and "--no-recipes" in on.stdout
