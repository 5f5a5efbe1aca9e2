"""Real single-rank profiles of tiny models on CPU (in-process): categories, identity, cross-checks."""

from __future__ import annotations

import itertools
import json

import pytest
from presets import tiny

from planner.cli.options import build_train_spec
from planner.models import spec_from_config
from planner.profile import load_profile
from planner.profile.launcher import run_profile

pytestmark = pytest.mark.slow

LLAMA = tiny("llama")
GPT2 = tiny("gpt2")
FAMILIES = {"llama": LLAMA, "gpt2": GPT2}
MICRO_BATCH, SEQ_LEN = 2, 32  # fmt: skip
# torch AdamW keeps a float32 scalar step counter per parameter tensor (torch/optim/adamw.py, _init_group).
ADAM_STEP_BYTES = 4


def profile(tmp_path, family: str, name: str = "p", **train_kwargs):
    train = build_train_spec(micro_batch=MICRO_BATCH, seq_len=SEQ_LEN, lora_rank=4, **train_kwargs)
    spec = spec_from_config(FAMILIES[family], f"tiny-{family}")
    status, message, out = run_profile(spec, train, num_gpus=1, steps=3, device="cpu", out=tmp_path / name,
                                       show_progress=False)  # fmt: skip
    return status, message, load_profile(out)


CASES = list(itertools.product(["llama", "gpt2"], ["full", "lora", "qlora"], [False, True]))


@pytest.mark.parametrize("family, method, ckpt", CASES, ids=[f"{f}-{m}-{'ckpt' if c else 'nockpt'}" for f, m, c in CASES])
def test_categories_add_up_and_params_are_exact(tmp_path, family, method, ckpt):
    precision = "bf16-mixed" if method == "qlora" else "fp32"
    status, message, prof = profile(tmp_path, family, method=method, precision=precision, grad_checkpointing=ckpt)
    assert status == "ok", message
    (rank,) = prof.ranks
    peak = rank.peak
    assert rank.steady_state and peak.step >= 1
    # The categories at the peak add up to the measured peak ...
    assert sum(peak.by_category.values()) == peak.allocated_bytes
    # ... which the profiler's own running total confirms, byte for byte.
    assert prof.summary["ranks"][0]["recorder_peak_bytes"] == peak.allocated_bytes
    # Parameters (incl. 4-bit weights and their quantization constants) equal the real storage exactly.
    assert peak.by_category["params"] == rank.identity["param_storage_bytes"]
    for phase in rank.phases.values():
        assert phase.by_category["params"] == rank.identity["param_storage_bytes"]
        assert sum(phase.by_category.values()) == phase.allocated_bytes
    # Optimizer states: AdamW's two fp32 moments per trainable parameter (fp32 weights, or peft's fp32
    # adapters) plus a step counter per parameter tensor; nothing else is identified as state.
    state = rank.phases["optimizer_step"].by_category["optimizer_states"]
    trainable = rank.identity["num_trainable_params"]
    assert 8 * trainable < state <= 8 * trainable + ADAM_STEP_BYTES * 64
    # Checkpointing shows up as recomputed activations during backward, and only then.
    recomputed = any("activations/recompute" in p.detail for p in rank.phases.values())
    assert recomputed == ckpt
    # The event table is the same story: its running total ends where the events leave it.
    tl = prof.timeline()
    assert int(tl["delta_bytes"].sum()) == int(tl["allocated_bytes"].iloc[-1])
    assert int(tl["allocated_bytes"].max()) >= peak.allocated_bytes


def test_mixed_precision_keeps_fp32_masters(tmp_path):
    status, message, prof = profile(tmp_path, "llama", method="full", precision="bf16-mixed")
    assert status == "ok", message
    rank = prof.ranks[0]
    num = rank.identity["num_params"]
    assert rank.peak.by_category["params"] == 2 * num  # bf16 weights
    # ZeRO paper's K = 12: fp32 master + two fp32 moments, plus AdamW's step counters.
    state = rank.phases["optimizer_step"].by_category["optimizer_states"]
    assert 12 * num < state <= 12 * num + ADAM_STEP_BYTES * 64
    # The 16-bit gradients are converted to fp32 at the step: at least 4 bytes per parameter of scratch.
    assert rank.phases["optimizer_step"].by_category["temporaries"] >= 4 * num


def test_torch_categoriser_agrees(tmp_path):
    spec = spec_from_config(LLAMA, "tiny-llama")
    # Long enough sequences that the peak is in backward: torch's categoriser leaves optimizer-step
    # scratch uncategorised, so the comparison is made where both name everything.
    train = build_train_spec(precision="fp32", micro_batch=MICRO_BATCH, seq_len=4 * SEQ_LEN)
    _, _, out = run_profile(spec, train, num_gpus=1, steps=2, device="cpu", out=tmp_path / "p",
                            torch_categories=True, show_progress=False)  # fmt: skip
    prof = load_profile(out)
    assert prof.ranks[0].peak.phase == "backward"
    ours = prof.ranks[0].peak.by_category
    theirs = prof.summary["ranks"][0]["torch_categories"]["by_category"]
    assert theirs["params"] == ours["params"]
    assert theirs["optimizer_states"] == ours["optimizer_states"]
    peak = sum(ours.values())
    assert sum(theirs.values()) == pytest.approx(peak, rel=0.01)
    # The two categorisers differ in how they name inputs and autograd scratch; bounded by 2% of the peak.
    for cat in ("grads", "activations", "temporaries", "other"):
        assert abs(theirs.get(cat, 0) - ours[cat]) <= 0.02 * peak, cat


def test_jsonl_data_and_meta(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": "word " * n}) for n in (10, 200, 45)) + "\n")
    spec = spec_from_config(GPT2, "tiny-gpt2")
    train = build_train_spec(precision="fp32", micro_batch=MICRO_BATCH, seq_len=SEQ_LEN)
    status, _, out = run_profile(spec, train, num_gpus=1, steps=2, device="cpu", out=tmp_path / "p",
                                 data=str(data), show_progress=False)  # fmt: skip
    assert status == "ok"
    prof = load_profile(out)
    # The batches keep the planned shape: int64 ids of micro_batch x seq_len.
    assert prof.ranks[0].peak.detail["other/inputs"] == 8 * MICRO_BATCH * SEQ_LEN
    meta = prof.meta
    assert meta["model"]["config"] == GPT2
    assert meta["train"]["seq_len"] == SEQ_LEN and meta["data"] == str(data)
    for pkg in ("torch", "transformers", "deepspeed", "peft", "bitsandbytes"):
        assert pkg in meta["versions"]
    assert meta["hardware"]["device"] == "cpu" and meta["hardware"]["device_memory_bytes"] > 0
    assert "git_commit" in meta


def test_exception_mid_step_leaves_a_failed_profile(tmp_path):
    spec = spec_from_config(LLAMA, "tiny-llama")
    train = build_train_spec(precision="fp32", micro_batch=MICRO_BATCH, seq_len=SEQ_LEN)
    status, message, out = run_profile(spec, train, num_gpus=1, steps=3, device="cpu", out=tmp_path / "p",
                                       fail_at="0:1:backward", show_progress=False)  # fmt: skip
    assert status == "failed"
    assert message == "rank 0 failed during step 1 backward: InjectedFailure: injected failure at step 1 backward (--fail-at)."
    prof = load_profile(out)
    assert prof.status == "failed" and prof.ranks[0].steps_completed == 1
    tl = prof.timeline()
    assert len(tl) > 0 and set(tl["step"]) >= {0, 1}  # the timeline up to the failure
    assert not (tmp_path / ".p.partial").exists()


def test_refuses_to_overwrite_without_force(tmp_path):
    from planner.errors import PlannerError

    profile(tmp_path, "gpt2", precision="fp32")
    with pytest.raises(PlannerError, match="--force"):
        profile(tmp_path, "gpt2", precision="fp32")


def test_jsonl_data_with_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from planner.profile.workload import pack_rows

    words = "the cat sat on a mat".split()
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path / "tok")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "the cat sat on a mat"}) + "\n" + json.dumps({"text": "a cat"}) + "\n")
    import torch

    rows = pack_rows(str(data), str(tmp_path / "tok"), 512, 3, torch.Generator())
    # 6 + eos + 2 + eos = 10 tokens, packed into rows of 3: the tokenizer's ids, in order.
    assert rows.tolist() == [[2, 3, 4], [5, 6, 7], [1, 6, 3]]
    spec = spec_from_config(LLAMA, "tiny-llama")
    train = build_train_spec(precision="fp32", micro_batch=2, seq_len=3)
    status, message, _ = run_profile(spec, train, num_gpus=1, steps=2, device="cpu", out=tmp_path / "p",
                                     data=str(data), tokenizer=str(tmp_path / "tok"), show_progress=False)  # fmt: skip
    assert status == "ok", message
