"""``--loss trl-fused-lm-head``: TRL 1.16's fused LM head (planner/estimate/step/trl_loss.py) against TRL's source.

Whole steps are checked against profiles of TRL's own add_fused_lm_head in the validation matrix
(``TRL_LOSS_CELLS``) and through a real SFTTrainer script (tests/test_profile_command.py). Here: the tile sizes
and buffer width read from the installed TRL, the micro-batch rule of the envelope, the GPU path, the bundle.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner.errors import PlannerError
from planner.estimate.step import trl_loss
from planner.estimate.step.simulate import simulate_step
from planner.specs import Loss, LossSpec
from planner.validate.matrix import TRL_LOSS_CELLS


def test_tile_constants_are_trls():
    pytest.importorskip("trl")
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    assert trl_loss.TOKEN_CHUNK_SIZE == chunked_logprob.TOKEN_CHUNK_SIZE
    assert trl_loss.VOCAB_CHUNK_SIZE == utils._CHUNKED_LOGPROB_CHUNK_SIZE


def test_tiles_follow_the_kernels_loops():
    assert trl_loss.tiles(62, 320) == [(62, 320)]
    assert trl_loss.tiles(126, 40000) == [(126, 32768), (126, 7232)]
    assert trl_loss.tiles(8191, 100) == [(4096, 100), (4095, 100)]


def _step(cell, b: int, s: int, device: str = "cpu"):
    train = dataclasses.replace(cell.train_spec(), micro_batch=b, seq_len=s)
    return simulate_step(cell.model_spec(), train, device=device)


def test_the_buffer_is_32768_wide_whatever_the_vocabulary():
    """mm_buf = torch.empty((min(N, 4096), chunk_size)): the backward peak of a small-vocabulary model holds the
    full 32768 columns, in forward and in backward."""
    cell = TRL_LOSS_CELLS[2]  # fp32 GPT-2, vocabulary 3072
    step = _step(cell, 2, 64)
    mm_buf = 2 * 63 * trl_loss.VOCAB_CHUNK_SIZE * 4
    assert step.backward_peak_bytes > mm_buf and step.forward_peak_bytes > mm_buf


def test_more_than_one_token_tile_is_simulated_directly():
    """Beyond 4096 tokens the tiles (and so the candidates) depend on the micro-batch: the envelope is not used,
    and the buffer stops growing at 4096 rows."""
    cell = TRL_LOSS_CELLS[0]
    assert trl_loss.is_linear_in_micro_batch((2, 3), 1024)
    assert not trl_loss.is_linear_in_micro_batch((5, 2, 3), 1024)
    a, b = _step(cell, 5, 1024), _step(cell, 6, 1024)  # 5115 and 6138 tokens: two tiles each
    # the second tile is smaller than the first: the tile temporaries do not grow with the micro-batch
    assert b.backward_peak_bytes - a.backward_peak_bytes < 2 * (a.backward_peak_bytes - _step(cell, 4, 1024)
                                                                 .backward_peak_bytes)


def test_the_gpu_path_has_no_tile_temporaries():
    """On CUDA Triton folds the tiles in place (compact): only mm_buf, the statistics and the fp32 gradients."""
    cell = TRL_LOSS_CELLS[0]
    cpu, gpu = _step(cell, 2, 64), _step(cell, 2, 64, "cuda")
    n, nc = 2 * 63, trl_loss.VOCAB_CHUNK_SIZE
    # _backward_tile's seven fp32 [n, nc] temporaries and one bool [n, nc] are CPU only
    assert cpu.backward_peak_bytes - gpu.backward_peak_bytes >= 7 * n * nc * 4


def test_lora_on_lm_head_is_refused():
    cell = TRL_LOSS_CELLS[1]
    train = dataclasses.replace(cell.train_spec(), lora=dataclasses.replace(cell.train_spec().lora,
                                                                            targets=("q_proj", "lm_head")))
    with pytest.raises(PlannerError, match="lm_head"):
        simulate_step(cell.model_spec(), train, device="cpu")


def test_the_loss_round_trips_through_json():
    from planner.specs import train_spec_from_dict, train_spec_to_dict

    train = dataclasses.replace(TRL_LOSS_CELLS[0].train_spec(), loss=LossSpec(Loss.TRL_FUSED_LM_HEAD))
    assert train_spec_from_dict(train_spec_to_dict(train)).loss.kind is Loss.TRL_FUSED_LM_HEAD


@pytest.mark.slow
def test_the_bundle_trains_with_trls_fused_lm_head(tmp_path):
    """The emitted train.py adds TRL's fused LM head and computes SFTTrainer's nll, on CPU."""
    pytest.importorskip("trl")
    from planner.emit import render_bundle, write_files
    from planner.estimate.core import estimate
    from tests.bundle_helpers import DATA, build_tokenizer, tiny_plan
    from tests.test_bundle_e2e import _tail, launch, summaries

    model, train, cluster, _, gbs = tiny_plan(method="lora", precision="fp32")
    train = dataclasses.replace(train, loss=LossSpec(Loss.TRL_FUSED_LM_HEAD))
    files = render_bundle(model, train, cluster, estimate(model, train, cluster), global_batch_size=gbs,
                          dataset=str(DATA), tokenizer=str(build_tokenizer(tmp_path / "tokenizer")))
    assert "pip install trl" in files["PLAN.md"] and "--loss trl-fused-lm-head" in files["PLAN.md"]
    write_files(files, tmp_path / "bundle")
    proc = launch(tmp_path / "bundle", "--cpu", "--random-init", "model_config.json", "--max-steps", "2",
                  cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    (s,) = summaries(tmp_path / "bundle", 1)
    assert s["global_step"] == 2 and s["loss_is_finite"] and s["loss"] == "trl-fused-lm-head"
