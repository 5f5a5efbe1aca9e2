"""ZeRO-3's reduction of its last bucket at the end of backward (estimate/zero3_epilogue.py, issue 17 item 1).

Measured figures: `planner profile -m examples/tiny-llama.json --gpus 2 --deepspeed-config
examples/deepspeed/deepspeed_tutorial_zero_infinity_offload.json --precision bf16-mixed --seq-len 64 -b 1 --device
cpu` (DeepSpeed 0.19.8, gloo, both ranks alike; session 9's profile and again in session 10), and the same config
without its offload sections: the steady-state peak is in step 1's backward, after the last gradient, with the
1e7-element bf16 bucket, reduce_scatter_coalesced's flat copy and gloo's input copy of the whole model (1,262,720
elements, 2,525,440 bytes each), one gathered 16-bit embedding (524,288 bytes) and no activation."""

from __future__ import annotations

from pathlib import Path

from planner import catalog
from planner.cli import deepspeed_options as dso
from planner.estimate.core import estimate
from planner.estimate.count.params import count_params
from planner.estimate.count.zero_partition import trainable_numels
from planner.estimate.zero3_epilogue import copy_elements, last_bucket, zero3_epilogue
from planner.models import load_model
from planner.specs import Cluster, Offload, Parallelism, Precision, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
MEASURED_ALLOCATED_BYTES = {Offload.OPTIMIZER_PARAMS: 39_679_893, Offload.NONE: 37_154_457}
MEASURED_TEMPORARIES_BYTES = {Offload.OPTIMIZER_PARAMS: 28_100_621, Offload.NONE: 25_575_185}
MODEL_BF16_BYTES = 2_525_440  # tiny-llama's 1,262,720 parameters in bf16


def test_last_bucket_is_what_the_greedy_fill_leaves():
    """stage3.py reduce_independent_p_g_buckets_and_remove_grads: reduce when the next gradient would overflow a
    non-empty bucket; an oversized gradient goes in alone."""
    assert last_bucket((5, 3, 4, 2), 100) == (5, 3, 4, 2)
    assert last_bucket((5, 3, 4, 2), 8) == (4, 2)
    assert last_bucket((5, 30, 2), 8) == (2,)
    assert last_bucket((5, 2, 30), 8) == (30,)


def test_flat_copy_pads_each_tensor_to_the_ranks_and_skips_one_even_tensor():
    """coalesced_collectives.py reduce_scatter_coalesced: chunks of ceil(n / ranks) per tensor, padded; a single
    tensor that divides evenly is reduced through its own view."""
    assert copy_elements((5, 3), 2) == 6 + 4
    assert copy_elements((6,), 2) == 0
    assert copy_elements((7,), 2) == 8
    assert copy_elements((), 2) == 0


def _tutorial(offload: Offload, device: str):
    choice = dso.read_choice(ROOT / "examples" / "deepspeed" / "deepspeed_tutorial_zero_infinity_offload.json")
    train = TrainSpec(precision=Precision.BF16_MIXED, seq_len=64, micro_batch=1,
                      parallelism=Parallelism.from_zero(choice.stage, offload, zero_config=choice.zero_config))
    return estimate(load_model(str(ROOT / "examples" / "tiny-llama.json")), train,
                    Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2), device=device, rank=0)


def test_the_tutorial_config_peaks_at_the_end_of_backward_as_measured():
    for offload in (Offload.OPTIMIZER_PARAMS, Offload.NONE):
        est = _tutorial(offload, "cpu")
        assert est.peak_phase == "backward" and est.per_gpu.activations_bytes == 0
        measured = MEASURED_ALLOCATED_BYTES[offload]
        # the profile's few hundred bytes of scalars and the loss are below 0.01%
        assert abs(est.per_gpu.total_bytes - measured) / measured < 1e-4
        assert abs(est.per_gpu.temporaries_bytes - MEASURED_TEMPORARIES_BYTES[offload]) / measured < 1e-4


def test_on_a_gpu_only_the_flat_copy_is_counted():
    """NCCL's reduce-scatter allocates no input copy (fsdp2_step.py), so on CUDA one whole-bucket copy is counted
    where the CPU run measured two; full fine-tuning keeps only the token embedding gathered."""
    model = load_model(str(ROOT / "examples" / "tiny-llama.json"))
    counts = count_params(model)
    train = _tutorial(Offload.NONE, "cpu").train
    numels = trainable_numels(counts, train, model.num_layers)
    assert sum(numels) == MODEL_BF16_BYTES // 2
    made = {device: zero3_epilogue(train, counts, numels, num_ranks=2, bucket_elements=10_000_000,
                                   threshold=100_000, grad_bytes=2, device=device) for device in ("cpu", "cuda")}
    assert made["cpu"].copies_bytes == 2 * MODEL_BF16_BYTES and made["cuda"].copies_bytes == MODEL_BF16_BYTES
    assert made["cpu"].gathered_cap_bytes == 2048 * 128 * 2  # the embedding, in bf16


def test_a_model_of_persistent_tensors_gathers_nothing():
    """Under the tutorial's 1e5-element persistence threshold every tensor of the Qwen2 h96 LoRA cell (embedding and
    head 96,000 elements) is persistent: nothing is gathered at its loss backward. Measured (rank 0, both kernel
    paths, planner validate): 22,805,037 bytes allocated at the peak; planner counted the largest module's 16-bit
    parameters and gradients (384,000 bytes) as gathered before (+1.68%)."""
    from planner.estimate.zero3_epilogue import largest_gathered_module
    from planner.validate.ds_tutorial_cells import DS_TUTORIAL_CELLS

    cell = DS_TUTORIAL_CELLS[2]
    counts = count_params(cell.model_spec())
    assert largest_gathered_module(counts, 100_000) == 0 and largest_gathered_module(counts, 960) == 96_000
    est = estimate(cell.model_spec(), cell.train_spec(), Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2),
                   device="cpu", rank=0)
    assert abs(est.per_gpu.total_bytes - 22_805_037) / 22_805_037 < 1e-4
