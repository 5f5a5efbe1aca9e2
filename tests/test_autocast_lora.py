"""--precision bf16-autocast with LoRA: accepted for LoRA (QLoRA and 16-bit adapters refused), the bundle keeps the
base in fp32, and (slow) the bundle's train.py through the real Trainer matches its own estimate (-0.22%)."""

from __future__ import annotations

import json

import pytest

from planner.errors import PlannerError
from planner.specs import Method, PeftDtype, Precision, TrainSpec
from tests.bundle_helpers import TINY_LLAMA


def test_lora_accepted_qlora_and_16bit_adapters_refused():
    assert TrainSpec(method=Method.LORA, precision=Precision.BF16_AUTOCAST).method is Method.LORA
    with pytest.raises(PlannerError, match="QLoRA"):
        TrainSpec(method=Method.QLORA, precision=Precision.BF16_AUTOCAST)
    with pytest.raises(PlannerError, match="16bit"):
        TrainSpec(method=Method.LORA, precision=Precision.BF16_AUTOCAST, lora_dtype=PeftDtype.BIT16)


def test_the_bundle_loads_a_lora_base_in_fp32_under_autocast():
    from planner.emit.train_script.model import MODEL

    assert 'autocast = args.precision.endswith("-autocast")' in MODEL
    assert 'args.method != "full" and not autocast' in MODEL


@pytest.mark.slow
def test_bundle_train_py_lora_autocast_through_the_trainer(tmp_path):
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
    rec = planner("recommend", "-m", str(config), "--gpus", "1", "-g", "2", "--method", "lora", "--zero", "0",
                  "--precision", "bf16-autocast", "--seq-len", "128", "--out", str(bundle), "--json", cwd=tmp_path)
    assert rec.returncode == 0, _tail(rec)
    _profile_bundle_through_the_trainer(bundle, tmp_path)
    ran = json.loads((tmp_path / "run" / "run_summary.rank0.json").read_text())
    assert ran["method"] == "lora" and ran["param_dtypes"] == ["float32"]
    check_within_bounds(tmp_path / "prof", 1, tmp_path)
