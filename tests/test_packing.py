"""--packing (issue 16 item 5): the spec and its JSON, the refusals, the mask on the tape against torch's own
behaviour, the CLI flag, --from, and the bundle. The matrix cells (planner/validate/packing_cells.py) check the
estimate against profiles of the real collator and model; the bundle's train.py through the Trainer is
test_bundle_train_py_packing_through_the_trainer (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.estimate.step.simulate import simulate_step
from planner.from_config import read_training_config
from planner.models import spec_from_config
from planner.specs import (
    AttnImpl,
    Method,
    Precision,
    Task,
    TaskSpec,
    TrainSpec,
    train_spec_from_dict,
    train_spec_to_dict,
)
from tests.bundle_helpers import TINY_LLAMA

TINY = spec_from_config(dict(TINY_LLAMA), "tiny-llama", "test")  # 2 layers, 4 heads, 2 K/V heads of 32
PACKED = TrainSpec(method=Method.FULL, precision=Precision.BF16, micro_batch=2, seq_len=64, packing=True)


def test_the_train_block_names_packing_only_when_on():
    assert "packing" not in train_spec_to_dict(dataclasses.replace(PACKED, packing=False))  # golden unchanged
    d = train_spec_to_dict(PACKED)
    assert d["packing"] is True and train_spec_from_dict(d) == PACKED


@pytest.mark.parametrize("changes, words", [
    (dict(task=TaskSpec(Task.DPO)), "--task dpo"),
    (dict(activation_offload=True), "--activation-offload"),
])
def test_refused_in_one_sentence(changes, words):
    with pytest.raises(PlannerError, match=words):
        dataclasses.replace(PACKED, **changes)


def test_a_family_without_the_packed_mask_is_refused():
    gpt2 = spec_from_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512},
                            "tiny-gpt2", "test")
    with pytest.raises(PlannerError, match="llama-like"):
        simulate_step(gpt2, dataclasses.replace(PACKED, attn_impl=AttnImpl.EAGER), device="cpu")


def test_sdpa_converts_and_saves_the_mask_per_call():
    """What packed.py writes from attention.cpp's convert_boolean_attn_mask: torch 2.13's CPU flash kernel saves a
    new additive mask in the query's dtype, not the bool mask it was given."""
    torch = pytest.importorskip("torch")
    q, k, v = (torch.randn(1, 4, 32, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 1, 32, 32, dtype=torch.bool).tril()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    saved = out.grad_fn._saved_attn_mask
    assert saved.shape == (1, 1, 32, 32) and saved.dtype == torch.bfloat16
    assert saved.data_ptr() != mask.data_ptr()


def test_the_saved_masks_and_repeated_kv_are_in_the_step():
    """Without checkpointing a packed SDPA step saves, per layer, the bf16 mask of the T = b*s row and K and V
    repeated from 2 to 4 heads; flash attention 2 (varlen) saves neither. T = 128, head_dim 32."""
    tokens, layers, head_dim = 128, TINY.num_layers, TINY.head_dim
    sdpa = simulate_step(TINY, PACKED, device="cuda", keep_grads=False)
    flash = simulate_step(TINY, dataclasses.replace(PACKED, attn_impl=AttnImpl.FLASH_ATTENTION_2), device="cuda",
                          keep_grads=False)
    mask = 2 * tokens * tokens  # [1, 1, T, T] bf16, one per layer
    repeated = 2 * 2 * (4 - 2) * tokens * head_dim  # K and V: 2 more heads of [T, head_dim] bf16 each
    # the bool mask [1, 1, T, T] also lives until the base model returns
    assert sdpa.forward_end_saved_bytes - flash.forward_end_saved_bytes == layers * (mask + repeated)


def test_the_row_is_every_token():
    """Packing at micro-batch b and length s is the unpacked step of one row of b * s tokens plus the mask."""
    flash = dataclasses.replace(PACKED, attn_impl=AttnImpl.FLASH_ATTENTION_2)
    one_row = dataclasses.replace(flash, packing=False, micro_batch=1, seq_len=128)
    a = simulate_step(TINY, flash, device="cuda")
    b = simulate_step(TINY, one_row, device="cuda")
    assert (a.forward_end_bytes, a.backward_peak_bytes) == (b.forward_end_bytes, b.backward_peak_bytes)


def test_the_flag_reaches_the_json(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_LLAMA))
    from typer.testing import CliRunner

    from planner.cli.app import build_app

    result = CliRunner().invoke(build_app(["estimate"]), ["estimate", "-m", str(config), "--method", "full", "--zero", "0", "--seq-len",
                                      "64", "--micro-batch", "2", "--packing", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["train"]["packing"] is True
    assert any("--packing" in n for n in data["rows"][0]["notes"])


def _config(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, packed", [
    ("model_name_or_path: x\ntorch_dtype: bfloat16\nbf16: true\nmax_length: 512\npacking: true\n", True),  # bfd, the default: padding-free
    ("model_name_or_path: x\ntorch_dtype: bfloat16\nbf16: true\nmax_length: 512\npadding_free: true\n", True),
    ("model_name_or_path: x\ntorch_dtype: bfloat16\nbf16: true\nmax_length: 512\npacking: true\npacking_strategy: wrapped\n", False),
    ("model_name_or_path: x\ntorch_dtype: bfloat16\nbf16: true\nmax_length: 512\npacking: false\n", False),
])
def test_from_trl(tmp_path, text, packed):
    cfg = read_training_config(_config(tmp_path, "sft.yaml", text))
    assert cfg.train.packing is packed


@pytest.mark.parametrize("name, text, words", [
    ("lf.yaml", "model_name_or_path: x\nstage: sft\nfinetuning_type: lora\ncutoff_len: 512\nneat_packing: true\n",
     "neat_packing"),
    ("ax.yaml", "base_model: x\nmicro_batch_size: 1\nsequence_len: 512\nsample_packing: true\nsdp_attention: true\n",
     "sample_packing"),
])
def test_from_refuses_other_packers_masks(tmp_path, name, text, words):
    with pytest.raises(PlannerError, match=words):
        read_training_config(_config(tmp_path, name, text))


def test_from_torchtune_packed_is_refused(tmp_path):
    example = Path(__file__).parent.parent / "examples/configs/torchtune/llama2_7B_full_single_device.yaml"
    text = example.read_text().replace("  train_on_input: True\n", "  train_on_input: True\n  packed: True\n")
    with pytest.raises(PlannerError, match="packed"):
        read_training_config(_config(tmp_path, "tt.yaml", text))


def test_from_llamafactory_packing_is_unpacked_memory(tmp_path):
    cfg = read_training_config(_config(tmp_path, "lf.yaml", "model_name_or_path: x\nstage: sft\nfinetuning_type: "
                                                           "lora\ncutoff_len: 512\npacking: true\n"))
    assert not cfg.train.packing and any("neat_packing" in n for n in cfg.notes)


def test_the_bundle_flattens_and_reads_back(tmp_path):
    from planner.emit import render_bundle, write_files
    from tests.bundle_helpers import tiny_plan

    model, train, cluster, est, gbs = tiny_plan(precision="bf16")
    train = dataclasses.replace(train, packing=True)
    files = render_bundle(model, train, cluster, est, global_batch_size=gbs)
    assert "'packing': True" in files["train.py"] and "flatten_rows" in files["train.py"]
    assert "--packing" in files["PLAN.md"]
    write_files(files, tmp_path / "bundle")
    assert read_training_config(tmp_path / "bundle").train.packing
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_train", tmp_path / "bundle" / "train.py")
    namespace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(namespace)  # defines; main() runs only as a script
    torch = pytest.importorskip("torch")

    class Tok:
        eos_token_id = 9

        def __call__(self, texts):
            return {"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]}

    rows = namespace.pack_documents(["a", "b"], Tok(), 5)
    assert [r["position_ids"].tolist() for r in rows] == [[0, 1, 2, 3, 0], [0, 1, 2, 3, 4]]
    assert rows[0]["labels"].tolist() == [-100, 2, 3, 9, -100]
    batch = namespace.flatten_rows(rows)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (1, 10) for k in ("input_ids", "labels",
                                                                                   "position_ids")}
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.slow
def test_bundle_train_py_packing_through_the_trainer(tmp_path):
    """The bundle's train.py with --packing (its rows flattened by its collator), recorded through the real Trainer
    and compared with its own estimate (issue 16, "close the loop"); measured -0.29%, worst category -0.15%."""
    from tests.test_profile_command import (
        _profile_bundle_through_the_trainer,
        _tail,
        check_within_bounds,
        planner,
    )

    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY_LLAMA))
    bundle = tmp_path / "bundle"
    rec = planner("recommend", "-m", str(config), "--gpus", "1", "-g", "2", "--method", "full", "--zero", "0",
                  "--precision", "bf16", "--optimizer", "adamw-fused", "--seq-len", "128", "--packing",
                  "--out", str(bundle), "--json", cwd=tmp_path)
    assert rec.returncode == 0, _tail(rec)
    _profile_bundle_through_the_trainer(bundle, tmp_path)
    assert json.loads((tmp_path / "prof" / "meta.json").read_text())["train"]["packing"]
    assert json.loads((tmp_path / "run" / "run_summary.rank0.json").read_text())["packing"]
    check_within_bounds(tmp_path / "prof", 1, tmp_path)
