"""The loss recipes (``--loss``, issue 16 item 3): the estimator's rules against the libraries' own numbers.

chunked-ce follows torchtune 0.6.1's CEWithChunkedOutputLoss (planner/estimate/step/loss_recipes.py); the
validation matrix (planner/validate/matrix.py ``LOSS_CELLS``) checks whole steps against profiles of the real
loss class. Here: torch.chunk's sizes, the class the profiler loads, and the bytes per logit that torchtune's
source implies (each chunk's fp32 copy lives alone in the forward; its two fp32 gradients alone in backward).
fused-linear-ce is modelled from Liger-Kernel's source (Triton, GPU only): its chunk rule against the example in
that source, and what its forward keeps.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner.errors import PlannerError
from planner.estimate.step.loss_recipes import LIGER_NOTE, liger_chunk_size, torch_chunk_sizes
from planner.estimate.step.simulate import simulate_step
from planner.specs import Loss, LossSpec, TrainSpec, train_spec_from_dict, train_spec_to_dict
from planner.validate.matrix import LOSS_CELLS

# Labels, masks and 0-d tensors the recipes allocate besides the [tokens, vocab] ones (int64 labels of 128
# tokens are 1 KiB): the rules below compare the logits terms, exact up to these.
SMALL_TENSOR_BYTES = 2048


def _step(cell, loss: LossSpec):
    train = dataclasses.replace(cell.train_spec(), loss=loss)
    return simulate_step(cell.model_spec(), train, device="cuda")


def test_chunk_sizes_are_torch_chunks():
    import torch

    for n in (1, 7, 32, 64, 100, 128, 129):
        for chunks in (1, 3, 8, 16, 200):
            assert torch_chunk_sizes(n, chunks) == [len(c) for c in torch.arange(n).chunk(chunks)]


def test_liger_chunk_size_follows_its_source():
    # liger_kernel/ops/fused_linear_cross_entropy.py: "BT = 4096*4, V = 32000, H = 4096 ==> inc_factor = 8,
    # chunk_size = 2048"
    assert liger_chunk_size(4096 * 4, 32000, 4096) == 2048
    # a single chunk when the budget allows; next_power_of_2 of cdiv(BT, cdiv(V, H)) otherwise
    assert liger_chunk_size(100, 1000, 4096) == 100
    assert liger_chunk_size(8192, 128256, 4096) == 256  # Llama 3 8B: cdiv(128256, 4096) = 32, 8192 / 32
    assert liger_chunk_size(3000, 50000, 1000) == 64  # cdiv(3000, 50) = 60 -> 64


def test_the_profiler_loads_torchtunes_loss_class():
    pytest.importorskip("torch")
    from planner.profile.loss_run import chunked_loss_class

    try:
        cls = chunked_loss_class()
    except PlannerError:
        pytest.skip("torchtune is not installed")
    import torch
    import torch.nn.functional as F

    assert cls.__name__ == "CEWithChunkedOutputLoss"
    assert cls.__module__ == "torchtune_ce_chunked_output_loss"
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 10, 50, generator=gen)
    labels = torch.randint(0, 50, (2, 10), generator=gen)
    loss = cls(num_output_chunks=3)(list(logits.chunk(3, dim=1)), labels)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1)))


def test_chunked_forward_saves_the_fp32_copy_but_one_chunk():
    """torchtune upcasts one chunk at a time: the standard loss's forward peak holds the whole fp32 copy (4 bytes
    per logit) beside the log-probabilities; chunked holds 1/N of it. Every other byte is the same."""
    cell = LOSS_CELLS[0]  # LoRA Llama, vocabulary 16384, 128 tokens: the logits peak
    num_logits = cell.micro_batch * cell.seq_len * cell.vocab
    standard = _step(cell, LossSpec())
    for chunks in (2, 4, 8):
        chunked = _step(cell, LossSpec(Loss.CHUNKED_CE, chunks))
        saved = standard.forward_peak_bytes - chunked.forward_peak_bytes
        assert abs(saved - 4 * num_logits * (chunks - 1) // chunks) <= SMALL_TENSOR_BYTES
        # backward: log-probabilities (4) + two fp32 gradients (8) per logit, against all log-probabilities and
        # the gradients of one chunk: 8 * (1 - 1/N) bytes per logit less
        saved = standard.backward_peak_bytes - chunked.backward_peak_bytes
        assert abs(saved - 8 * num_logits * (chunks - 1) // chunks) <= SMALL_TENSOR_BYTES
        # what stays saved for backward is the same: every chunk's fp32 log-probabilities
        assert abs(standard.forward_end_saved_bytes - chunked.forward_end_saved_bytes) <= SMALL_TENSOR_BYTES
    one = _step(cell, LossSpec(Loss.CHUNKED_CE, 1))
    assert abs(one.forward_peak_bytes - standard.forward_peak_bytes) <= SMALL_TENSOR_BYTES


def test_fused_linear_ce_keeps_gradients_not_logits():
    """Liger's forward keeps grad_input ([tokens, hidden]) and, for a trainable lm_head, grad_weight ([V, hidden])
    for backward, and no [tokens, V] tensor; its transient is one [chunk, V] buffer."""
    cell = LOSS_CELLS[1]  # full bf16-mixed Qwen2 (tied lm_head, trainable), vocabulary 8192
    tokens = cell.micro_batch * cell.seq_len
    standard = _step(cell, LossSpec())
    fused = _step(cell, LossSpec(Loss.FUSED_LINEAR_CE))
    num_logits = tokens * cell.vocab
    grad_input, grad_weight = 2 * tokens * cell.hidden, 2 * cell.vocab * cell.hidden
    # standard saves 4 bytes per logit (log-probabilities) and lm_head's input (a view of the final norm's output,
    # [tokens, hidden] in bf16, the same bytes as grad_input)
    assert abs((standard.forward_end_saved_bytes - 4 * num_logits) - (fused.forward_end_saved_bytes - grad_weight)) \
        <= SMALL_TENSOR_BYTES + grad_input
    assert fused.logits_bytes == 0
    assert fused.forward_peak_bytes < standard.forward_peak_bytes - 6 * num_logits


def test_fused_linear_ce_is_simulated_directly_at_each_micro_batch():
    """Liger's chunk rounds b * s / ceil(V / H) up to a power of two, so its [chunk, V] buffer is not linear in b:
    lines through b = 2, 3 would be off from b = 4 on; simulate_step matches a direct simulation at every b."""
    from planner.estimate.step.simulate import _envelope, _simulate, step_inputs

    cell = LOSS_CELLS[1]  # vocabulary 8192, hidden 96, 128 tokens: chunks of 4, 8, 8, 8, 16 ... tokens
    model = cell.model_spec()
    assert [liger_chunk_size(b * 128, cell.vocab, cell.hidden) for b in (2, 3, 4, 5, 6)] == [4, 8, 8, 8, 16]
    missed = 0
    for b in (2, 3, 4, 5, 6, 7, 8):
        train = dataclasses.replace(cell.train_spec(), loss=LossSpec(Loss.FUSED_LINEAR_CE), micro_batch=b)
        direct = _simulate(step_inputs(model, train, device="cuda")).profile
        assert simulate_step(model, train, device="cuda") == direct
        enveloped = _envelope(step_inputs(model, train, device="cuda", micro_batch=0)).at(b)
        missed += enveloped.forward_peak_bytes != direct.forward_peak_bytes
    assert missed  # the envelope would have been wrong here


def test_the_loss_is_a_train_spec_field_with_a_json_block():
    train = TrainSpec(loss=LossSpec(Loss.CHUNKED_CE, 4))
    assert train_spec_to_dict(train)["loss"] == {"kind": "chunked-ce", "chunks": 4}
    assert train_spec_from_dict(train_spec_to_dict(train)) == train
    old = train_spec_to_dict(TrainSpec())
    del old["loss"]  # a plan written before the field: the standard loss
    assert train_spec_from_dict(old).loss == LossSpec()
    with pytest.raises(PlannerError, match="--loss-chunks"):
        LossSpec(Loss.CHUNKED_CE, 0)


def test_cli_takes_the_loss(cli):
    args = ("estimate", "-m", "llama-3.2-1b", "--method", "lora", "--zero", "0", "--offload", "none", "--json")
    proc = cli(*args, "--loss", "chunked-ce", "--loss-chunks", "4")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["train"]["loss"] == {"kind": "chunked-ce", "chunks": 4}
    proc = cli(*args, "--loss", "fused-linear-ce")
    assert proc.returncode == 0, proc.stderr
    assert LIGER_NOTE in json.loads(proc.stdout)["rows"][0]["notes"]


@pytest.mark.parametrize(("flags", "word"), [(("--loss", "sparse"), "--loss"),
                                              (("--loss", "chunked-ce", "--loss-chunks", "0"), "--loss-chunks")])
def test_cli_refuses_a_bad_loss(cli, flags, word):
    proc = cli("estimate", "-m", "gpt2", *flags)
    assert proc.returncode == 1 and word in proc.stderr


def test_gemma2_softcapping_is_refused_for_the_other_losses():
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.models import load_model
    from planner.specs import Cluster

    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=1)
    with pytest.raises(PlannerError, match="softcapping"):
        estimate(load_model("gemma-2-9b"), TrainSpec(loss=LossSpec(Loss.CHUNKED_CE)), cluster)


@pytest.mark.slow
def test_the_bundle_trains_with_torchtunes_chunked_loss(tmp_path):
    """The emitted train.py runs the planned chunked loss: torchtune's class in its Trainer, on CPU."""
    from planner.emit import render_bundle, write_files
    from planner.estimate.core import estimate
    from planner.profile.loss_run import chunked_loss_class
    from tests.bundle_helpers import DATA, build_tokenizer, tiny_plan
    from tests.test_bundle_e2e import _tail, launch, summaries

    try:
        chunked_loss_class()
    except PlannerError:
        pytest.skip("torchtune is not installed")
    model, train, cluster, _, gbs = tiny_plan(method="lora", precision="bf16-mixed")
    train = dataclasses.replace(train, loss=LossSpec(Loss.CHUNKED_CE, 4))
    files = render_bundle(model, train, cluster, estimate(model, train, cluster), global_batch_size=gbs,
                          dataset=str(DATA), tokenizer=str(build_tokenizer(tmp_path / "tokenizer")))
    assert "pip install --no-deps torchtune" in files["PLAN.md"] and "--loss chunked-ce" in files["PLAN.md"]
    write_files(files, tmp_path / "bundle")
    bundle = tmp_path / "bundle"
    proc = launch(bundle, "--cpu", "--random-init", "model_config.json", "--max-steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    (s,) = summaries(bundle, 1)
    assert s["global_step"] == 2 and s["loss_is_finite"] and s["loss"] == "chunked-ce"


def test_the_bundle_asks_liger_for_the_fused_loss_alone():
    from planner.emit import render_bundle
    from planner.estimate.core import estimate
    from tests.bundle_helpers import tiny_plan

    model, train, cluster, _, gbs = tiny_plan(method="lora")
    train = dataclasses.replace(train, loss=LossSpec(Loss.FUSED_LINEAR_CE))
    files = render_bundle(model, train, cluster, estimate(model, train, cluster), global_batch_size=gbs)
    assert "pip install liger-kernel" in files["PLAN.md"]
    script = files["train.py"]
    assert '"use_liger_kernel": True' in script and '"fused_linear_cross_entropy": True' in script
    assert "'loss': {'chunks': 8, 'kind': 'fused-linear-ce'}" in script


# ---------------------------------------------------------------- --from: the projects' documented fields

TORCHTUNE_BASE = ("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
                  "optimizer:\n  _component_: torch.optim.AdamW\ndtype: bf16\nbatch_size: 2\n"
                  "tokenizer:\n  _component_: x\n  max_seq_len: 4096\n")
AXOLOTL_BASE = "base_model: meta-llama/Llama-3.2-1B\nadapter: lora\nmicro_batch_size: 1\nsequence_len: 4096\n"


@pytest.mark.parametrize(("text", "loss", "note"), [
    # axolotl's Liger plugin (src/axolotl/integrations/liger/args.py) with its usual kernel flags
    (AXOLOTL_BASE + "plugins:\n  - axolotl.integrations.liger.LigerPlugin\nliger_rope: true\nliger_rms_norm: true\n"
     "liger_glu_activation: true\nliger_fused_linear_cross_entropy: true\n", LossSpec(Loss.FUSED_LINEAR_CE),
     "liger_rope, liger_rms_norm, liger_glu_activation"),
    # axolotl's Cut Cross-Entropy plugin (integrations/cut_cross_entropy/args.py)
    (AXOLOTL_BASE + "plugins:\n  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n"
     "cut_cross_entropy: true\n", LossSpec(Loss.FUSED_LINEAR_CE), "Cut Cross-Entropy"),
    (AXOLOTL_BASE, LossSpec(), None),
    # LLaMA-Factory enable_liger_kernel: apply_liger_kernel's defaults (fused_linear_cross_entropy=True)
    ("model_name_or_path: meta-llama/Llama-3.2-1B\nstage: sft\nfinetuning_type: lora\nenable_liger_kernel: true\n",
     LossSpec(Loss.FUSED_LINEAR_CE), "enable_liger_kernel"),
    # torchtune's recipes: CEWithChunkedOutputLoss, num_output_chunks 8 unless set
    (TORCHTUNE_BASE + "loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n",
     LossSpec(Loss.CHUNKED_CE, 8), None),
    (TORCHTUNE_BASE + "loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n"
     "  num_output_chunks: 16\n", LossSpec(Loss.CHUNKED_CE, 16), None),
    (TORCHTUNE_BASE + "loss:\n  _component_: torch.nn.CrossEntropyLoss\n", LossSpec(), None),
])
def test_from_config_reads_the_loss(tmp_path, text, loss, note):
    from planner.from_config import read_training_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    fc = read_training_config(cfg)
    assert fc.train.loss == loss
    if note is not None:
        assert any(note in n for n in fc.notes), fc.notes


@pytest.mark.parametrize(("text", "word"), [
    (TORCHTUNE_BASE + "loss:\n  _component_: torchtune.modules.loss.LinearCrossEntropyLoss\n",
     "LinearCrossEntropyLoss"),
    (AXOLOTL_BASE + "plugins:\n  - axolotl.integrations.spectrum.SpectrumPlugin\n", "SpectrumPlugin"),
])
def test_from_config_refuses_other_losses(tmp_path, text, word):
    from planner.from_config import read_training_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(PlannerError, match=word):
        read_training_config(cfg)


def test_a_typed_loss_overrides_the_configs(tmp_path, cli):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TORCHTUNE_BASE + "loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n")
    proc = cli("estimate", "--from", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["train"]["loss"] == {"kind": "chunked-ce", "chunks": 8}
    proc = cli("estimate", "--from", str(cfg), "--loss", "standard", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["train"]["loss"]["kind"] == "standard"
