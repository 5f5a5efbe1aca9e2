"""--precision's recipes (issue 16 item 1): names and aliases, what the autocast recipe refuses, and the autocast
rule of the simulated step against real torch.autocast on CPU.

The autocast check is independent of planner's profiler: a tiny model runs its forward (loss included, as the HF
Trainer's compute_loss does) under ``torch.autocast("cpu", torch.bfloat16)`` and a ``saved_tensors_hooks`` pack
hook sums the storages autograd saves for backward (parameters left out: the estimator counts them as weights).
What autocast changes in them, against the same model in fp32, must equal what the simulation changes, to the
byte: the 16-bit copies of every weight and matmul input that mm/addmm save, SDPA's casts, the 16-bit logits'
upcast. (Both measurements share a few hundred bytes the simulation does not list, e.g. rotary's inv_freq
products; the difference cancels them.)
"""

from __future__ import annotations

import pytest

from planner.errors import PlannerError
from planner.estimate.step.simulate import simulate_step
from planner.models import spec_from_config
from planner.specs import (
    AttnImpl,
    LoraSpec,
    Method,
    Parallelism,
    PeftDtype,
    Precision,
    TrainSpec,
    train_spec_from_dict,
)
from planner.specs.train import train_spec_to_dict

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 512, "max_position_embeddings": 256}
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 256,
        "bos_token_id": 0, "eos_token_id": 0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}


@pytest.mark.parametrize("name, member", [
    ("32-true", Precision.FP32), ("32", Precision.FP32), ("bf16-true", Precision.BF16),
    ("16-mixed", Precision.FP16_AUTOCAST), ("bf16-autocast", Precision.BF16_AUTOCAST),
    ("bf16-mixed", Precision.BF16_MIXED),  # planner's own meaning: 16-bit weights with fp32 masters
])
def test_names_and_lightning_aliases(name, member):
    assert Precision(name) is member


def test_the_cli_reads_aliases_and_names_every_recipe_in_its_help():
    from planner.cli.option_types import PrecisionOpt
    from planner.cli.options import _enum

    assert _enum(Precision, "BF16-TRUE", "--precision") is Precision.BF16
    help_text = PrecisionOpt.__metadata__[0].help
    for word in ("bf16-mixed", "fp16-mixed", "bf16-autocast", "fp16-autocast", "bf16-true", "32-true", "autocast"):
        assert word in help_text
    with pytest.raises(PlannerError, match="--precision 'bf16-fast' is not valid"):
        _enum(Precision, "bf16-fast", "--precision")


def test_autocast_dtypes():
    ac = Precision.BF16_AUTOCAST
    assert (ac.compute_dtype, ac.autocast_dtype, ac.matmul_dtype, ac.has_master_weights) == ("fp32", "bf16", "bf16", False)
    assert Precision.BF16_MIXED.autocast_dtype == "" and Precision.BF16_MIXED.matmul_dtype == "bf16"


@pytest.mark.parametrize("changes, words", [
    (dict(parallelism=Parallelism.from_zero(2)), "without DeepSpeed"),
    (dict(method=Method.QLORA, lora=LoraSpec()), "QLoRA"),
    (dict(method=Method.LORA, lora_dtype=PeftDtype.BIT16), "--lora-dtype 16bit"),
    (dict(attn_impl=AttnImpl.EAGER), "--attn-impl eager"),
    (dict(activation_offload=True), "--activation-offload"),
])
def test_autocast_refuses_what_is_not_modelled(changes, words):
    with pytest.raises(PlannerError, match=words):
        TrainSpec(precision=Precision.BF16_AUTOCAST, **changes)


def test_autocast_refuses_families_not_written_down():
    cfg = dict(LLAMA, model_type="gemma2", head_dim=16)
    with pytest.raises(PlannerError, match="not 'gemma2'"):
        simulate_step(spec_from_config(cfg, "gemma2"), TrainSpec(precision=Precision.BF16_AUTOCAST, seq_len=32))


def test_json_round_trip():
    train = TrainSpec(precision=Precision.BF16_AUTOCAST, seq_len=64)
    d = train_spec_to_dict(train)
    assert d["precision"] == "bf16-autocast" and train_spec_from_dict(d) == train


def test_autocast_states_are_fp32_without_masters():
    """fp32 weights and gradients, fp32 AdamW moments and no master copy: the model states of fp32 training, and
    16 bytes per parameter as bf16-mixed's 2 + 2 + 4 (master) + 8."""
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.models import load_model
    from planner.specs import Cluster

    model = load_model("llama-3.2-1b")
    cluster = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=1)
    ac, fp32, mixed = (estimate(model, TrainSpec(precision=p, seq_len=512), cluster).per_gpu
                       for p in (Precision.BF16_AUTOCAST, Precision.FP32, Precision.BF16_MIXED))
    n = ac.params_bytes // 4
    assert (ac.params_bytes, ac.grads_bytes, ac.optimizer_states_bytes) == (4 * n, 4 * n, 8 * n)
    assert (ac.params_bytes, ac.grads_bytes, ac.optimizer_states_bytes) == (
        fp32.params_bytes, fp32.grads_bytes, fp32.optimizer_states_bytes)
    assert ac.params_bytes + ac.grads_bytes + ac.optimizer_states_bytes == (
        mixed.params_bytes + mixed.grads_bytes + mixed.optimizer_states_bytes)


def _saved_bytes(cfg: dict, autocast: bool, b: int = 2, s: int = 32) -> int:
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    c = dict(cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(c.pop("model_type"), **c), attn_implementation="sdpa")
    model.train()
    ids = torch.randint(0, c["vocab_size"], (b, s))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, labels=ids, use_cache=False)
        else:
            out = model(input_ids=ids, labels=ids, use_cache=False)
    del out
    return sum(seen.values())


@pytest.mark.slow
@pytest.mark.parametrize("cfg, name", [(LLAMA, "llama"), (GPT2, "gpt2")])
def test_autocast_saved_tensors_match_real_torch_autocast(cfg, name):
    spec = spec_from_config(dict(cfg), name)

    def simulated(precision: Precision) -> int:
        train = TrainSpec(precision=precision, micro_batch=2, seq_len=32, attn_impl=AttnImpl.SDPA, dropout=0.0)
        return simulate_step(spec, train, device="cpu").forward_end_saved_bytes

    measured = _saved_bytes(cfg, True) - _saved_bytes(cfg, False)
    assert measured != 0
    assert simulated(Precision.BF16_AUTOCAST) - simulated(Precision.FP32) == measured
