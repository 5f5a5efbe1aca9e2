"""QLoRA's 4-bit base partitioned by DeepSpeed ZeRO-3 (planner/estimate/qlora_shard.py), against numbers measured
by `planner profile` on 2 CPU ranks and bitsandbytes' own packing rule."""

from __future__ import annotations

from planner import catalog
from planner.estimate.core import estimate
from planner.estimate.qlora_shard import quant_storage_dtype, quant_storage_elements
from planner.specs import Cluster, Method, Parallelism, Precision, TrainSpec
from planner.validate.cell import HEAD_DIM, Cell
from planner.validate.fsdp2_cells import _fsdp
from tests.bundle_helpers import tiny_plan


def test_storage_elements_follow_bitsandbytes_packing():
    # bitsandbytes backends/default/ops.py _quantize_4bit_impl: (n + 1) // 2 bytes viewed as the storage dtype
    assert quant_storage_elements(96 * 96, "bf16") == 2304
    assert quant_storage_elements(96 * 32, "bf16") == 768
    assert quant_storage_elements(96 * 96, "uint8") == 4608
    assert quant_storage_elements(4097, "uint8") == 2049


def test_storage_dtype_is_the_compute_dtype_only_when_sharded():
    assert quant_storage_dtype(TrainSpec(method=Method.QLORA, parallelism=Parallelism.from_zero(3))) == "bf16"
    fp16 = TrainSpec(method=Method.QLORA, precision=Precision.FP16_MIXED, parallelism=Parallelism.from_zero(3))
    assert quant_storage_dtype(fp16) == "fp16"
    assert quant_storage_dtype(TrainSpec(method=Method.QLORA, parallelism=Parallelism.from_zero(2))) == "uint8"


def _rank_params(cell: Cell) -> int:
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=cell.num_ranks)
    return estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", allow_longer=True).per_gpu.params_bytes


def test_zero3_rank_params_match_the_profiles():
    # `planner profile --zero 3 --method qlora` on 2 ranks (peft + bitsandbytes 0.50.2 + DeepSpeed 0.19.8,
    # bnb_4bit_quant_storage bf16), params by identity at the peak: Llama h96 NF4 with double quantization
    # (k/v projections of 768 bf16 elements under the 960-element persistence threshold stay whole) and
    # Qwen2 h128 without it.
    llama = Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
                 method="qlora-dq", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
                 micro_batch=2)
    qwen = Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
                method="qlora-nodq", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=True, attn="sdpa", seq_len=64,
                micro_batch=2)
    assert _rank_params(llama) == 324_008
    assert _rank_params(qwen) == 432_000


def test_zero3_shards_the_4bit_base_below_stage_2():
    model, _, cluster, _, _ = tiny_plan(method="qlora", zero=2, num_gpus=4, precision="bf16-mixed")
    per = {z: estimate(model, TrainSpec(method=Method.QLORA, parallelism=Parallelism.from_zero(z), seq_len=32),
                       cluster).per_gpu
           for z in (2, 3)}
    assert per[3].params_bytes < per[2].params_bytes


def test_fsdp2_rank_params_match_the_profile():
    # `planner profile` of torchtune's per-layer fully_shard on 2 gloo ranks (bf16 policy, fp32 reduce), Llama h96
    # NF4 double-quant, --qlora-prep 16bit: padded dim-0 shards of the [n/4, 1] bf16 storage, each quant_state whole
    # (identified on the Linear4bit modules), bf16 unquantized layers and fp32 adapters; params at the peak.
    llama = Cell(family="llama", hidden=96, layers=3, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
                 method="qlora-dq", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
                 micro_batch=2, qlora_prep="16bit", fsdp=_fsdp())
    assert _rank_params(llama) == 375_468
