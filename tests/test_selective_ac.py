"""--selective-ac (torchtitan's selective activation checkpointing, issue 22): the spec, the recomputation the
time model counts (checked against torch's own FLOP counter running the real policies), and the layer
policy's memory on the simulated step."""

from __future__ import annotations

import dataclasses

import pytest

from planner.errors import PlannerError
from planner.estimate.count.params import count_params, split_params
from planner.estimate.flops import flops_per_token
from planner.estimate.step.simulate import simulate_step
from planner.models import load_model, spec_from_config
from planner.specs import Method, TrainSpec, train_spec_from_dict, train_spec_to_dict
from planner.specs.selective_ac import checkpointed_layers


def test_spec_accepts_torchtitans_options_and_refuses_the_rest():
    assert TrainSpec(selective_ac="op").selective_ac == "op"
    assert TrainSpec(selective_ac="2").selective_ac == "2"
    for bad in ("0", "-1", "layer", "1.5"):
        with pytest.raises(PlannerError, match="--selective-ac"):
            TrainSpec(selective_ac=bad)
    with pytest.raises(PlannerError, match="exclusive"):
        TrainSpec(selective_ac="op", grad_checkpointing=True)


def test_json_round_trip_and_absent_by_default():
    assert "selective_ac" not in train_spec_to_dict(TrainSpec())
    t = TrainSpec(selective_ac="3")
    assert train_spec_from_dict(train_spec_to_dict(t)) == t


def test_layer_policy_counts_from_one_as_torchtitan_and_torchtune():
    # torchtitan _apply_layer_sac / torchtune checkpoint_wrapper: count += 1; checkpoint when count % N == 0
    assert checkpointed_layers("2", 5) == (1, 3)
    assert checkpointed_layers("3", 7) == (2, 5)
    assert checkpointed_layers("1", 3) == (0, 1, 2)
    assert checkpointed_layers("op", 3) == ()


def test_op_policy_recomputes_wk_wo_and_w3_of_llama_3_8b():
    """torchtitan's op policy on a Llama layer (mms wq, wk, wv, wo, w1, w3, w2 in that order): the even-numbered
    ones, wk (4096 x 1024), wo (4096 x 4096) and w3 (4096 x 14336), are recomputed; SDPA is saved."""
    model = load_model("llama-3.1-8b")
    counts = count_params(model)
    train = TrainSpec(selective_ac="op")
    fpt = flops_per_token(model, train, counts, split_params(counts, train))
    per_layer = 4096 * 1024 + 4096 * 4096 + 4096 * 14336
    assert fpt.recompute == 2.0 * per_layer * 32


def _tiny_llama(layers: int = 4) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def _measured_recompute_flops(cfg: dict, selective_ac: str, b: int, s: int) -> int:
    """FLOPs torch's FlopCounterMode counts in one forward + backward under the policy, minus the same step
    without checkpointing: what the policy recomputes (the profiler's own policy code, selective_ac_run.py)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM, LlamaConfig

    from planner.profile import selective_ac_run
    from planner.profile.workload import checkpointed_layers as decoder_layers

    totals = []
    for policy in ("", selective_ac):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), attn_implementation="sdpa")
        m.train()
        if policy:
            selective_ac_run.enable(m, TrainSpec(selective_ac=policy), decoder_layers(m))
        ids = torch.randint(0, cfg["vocab_size"], (b, s))
        with FlopCounterMode(display=False) as fc:
            m(input_ids=ids, labels=ids).loss.backward()
        totals.append(fc.get_total_flops())
    return totals[1] - totals[0]


@pytest.mark.slow
def test_op_recompute_flops_match_torchs_flop_counter_under_the_real_policy():
    """The matmul FLOPs the real op policy re-runs equal planner's count exactly. (torch's FlopCounterMode counts
    no FLOPs for the CPU SDPA kernel, which the policy saves anyway; under full or layer checkpointing it would
    miss the recomputed attention, and non-reentrant checkpointing's early stop skips the layer's last matmul,
    down_proj, whose output nothing saves: planner's full-checkpointing count includes it.)"""
    cfg, policy = _tiny_llama(), "op"
    b, s = 2, 32
    measured = _measured_recompute_flops(cfg, policy, b, s)
    model = spec_from_config(cfg, "tiny-llama", "test")
    counts = count_params(model)
    train = TrainSpec(selective_ac=policy, seq_len=s, micro_batch=b)
    fpt = flops_per_token(model, train, counts, split_params(counts, train))
    assert measured > 0
    assert fpt.recompute * b * s == measured


def test_layer_policy_recomputes_its_share_of_full_checkpointing():
    model = load_model("llama-3.1-8b")
    counts = count_params(model)
    fpts = {p: flops_per_token(model, TrainSpec(selective_ac=p), counts, split_params(counts, TrainSpec()))
            for p in ("1", "2", "3", "33")}
    full = flops_per_token(model, TrainSpec(grad_checkpointing=True), counts, split_params(counts, TrainSpec()))
    assert fpts["1"].recompute == full.recompute
    assert fpts["2"].recompute == pytest.approx(full.recompute * 16 / 32)
    assert fpts["3"].recompute == pytest.approx(full.recompute * 10 / 32)
    assert fpts["33"].recompute == 0.0


def test_layer_policy_every_layer_is_full_checkpointing_on_the_step():
    """N = 1 checkpoints every layer: the layer-by-layer simulation equals the full-checkpointing step byte for
    byte (which tests/test_activations.py checks against CPU measurements)."""
    model = load_model("llama-3.2-1b")
    base = TrainSpec(seq_len=256, micro_batch=2)
    full = simulate_step(model, dataclasses.replace(base, grad_checkpointing=True), device="cpu")
    every = simulate_step(model, dataclasses.replace(base, selective_ac="1"), device="cpu")
    assert every.forward_end_bytes == full.forward_end_bytes
    assert every.backward_peak_bytes == full.backward_peak_bytes
    assert every.backward_late_peak_bytes == full.backward_late_peak_bytes
    assert every.backward_end_bytes == full.backward_end_bytes
    none = simulate_step(model, base, device="cpu")
    half = simulate_step(model, dataclasses.replace(base, selective_ac="2"), device="cpu")
    assert full.forward_end_bytes < half.forward_end_bytes < none.forward_end_bytes


def test_lora_op_policy_recomputes_every_second_mm_of_base_and_adapters():
    """peft's LoRA linear runs base, lora_A, lora_B: three mms, so the odd/even count runs across them."""
    model = load_model("llama-3.1-8b")
    counts = count_params(model)
    train = TrainSpec(method=Method.LORA, selective_ac="op")
    fpt = flops_per_token(model, train, counts, split_params(counts, train))
    full = flops_per_token(model, dataclasses.replace(train, selective_ac="", grad_checkpointing=True), counts,
                           split_params(counts, train))
    assert 0 < fpt.recompute < full.recompute


def test_torchtune_ac_mode_and_option_read_as_its_recipe_applies_them(tmp_path):
    """recipes/full_finetune_distributed.py: ac_mode/ac_option apply only with enable_activation_checkpointing
    false; training/activations.py: selective N is every N-th layer (0 and 1: every layer), 'op' fails."""
    from planner.from_config import read_training_config

    base = ("model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
            "loss:\n  _component_: torch.nn.CrossEntropyLoss\noptimizer:\n  _component_: torch.optim.AdamW\n"
            "batch_size: 1\ndtype: bf16\n")
    cfg = tmp_path / "tt.yaml"
    for extra, ckpt, selective in (("ac_mode: selective\nac_option: 2\n", False, "2"),
                                   ("ac_mode: selective\nac_option: 1\n", True, ""),
                                   ("ac_mode: full\n", True, ""),
                                   ("enable_activation_checkpointing: true\nac_mode: selective\nac_option: 2\n",
                                    True, ""),
                                   ("", False, "")):
        cfg.write_text(base + extra)
        got = read_training_config(cfg)
        assert (got.train.grad_checkpointing, got.train.selective_ac) == (ckpt, selective), extra
    cfg.write_text(base + "ac_mode: selective\nac_option: op\n")
    with pytest.raises(PlannerError, match="ac_option"):
        read_training_config(cfg)


def test_op_policy_memory_lies_between_full_and_no_checkpointing_and_falls_back_where_not_modelled():
    """The op policy's cache on the step (sac.py) keeps more than full checkpointing and less than none; under
    ZeRO-3 (DeepSpeed's own linear) the no-checkpointing step stands in, with the note."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.specs import Cluster, Parallelism

    model = load_model("llama-3.2-1b")
    base = TrainSpec(seq_len=512, micro_batch=2)
    steps = {name: simulate_step(model, dataclasses.replace(base, **kw), device="cpu").forward_end_bytes
             for name, kw in (("none", {}), ("full", {"grad_checkpointing": True}), ("op", {"selective_ac": "op"}))}
    assert steps["full"] < steps["op"] < steps["none"]
    cluster = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=2)
    z3 = dataclasses.replace(base, parallelism=Parallelism.from_zero(3))
    op = estimate(model, dataclasses.replace(z3, selective_ac="op"), cluster)
    assert op.per_gpu.activations_bytes == estimate(model, z3, cluster).per_gpu.activations_bytes
    assert any("--selective-ac op" in n for n in op.notes)
