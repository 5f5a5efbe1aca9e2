"""Cells of one training recipe each, in the full matrix only (the CI subset stays within its time budget), and
the GPU reference cells: each tuple's comment says what it checks. planner/validate/matrix.py appends
``FULL_ONLY_CELLS`` to the seeded design."""

from __future__ import annotations

import json

from planner.specs import ZeroConfig
from planner.validate.autocast_lora_cells import AUTOCAST_LORA_CELLS
from planner.validate.base_autocast_cells import BASE_AUTOCAST_CELLS
from planner.validate.cell import HEAD_DIM, Cell
from planner.validate.dpo_deepspeed_cells import DPO_DEEPSPEED_CELLS
from planner.validate.ds_contiguous_cells import DS_CONTIGUOUS_CELLS
from planner.validate.ds_offload_cells import DS_OFFLOAD_CELLS
from planner.validate.ds_stage0_cells import DS_STAGE0_CELLS
from planner.validate.ds_tutorial_cells import DS_TUTORIAL_CELLS
from planner.validate.fsdp2_cells import FSDP2_CELLS
from planner.validate.grpo_cells import GRPO_CELLS
from planner.validate.hsdp_cells import FOUR_RANK_FSDP2_CELLS, HSDP_CELLS
from planner.validate.packing_cells import PACKING_CELLS
from planner.validate.qlora_shard_cells import QLORA_FSDP2_CELLS, QLORA_ZERO3_CELLS
from planner.validate.selective_cells import SELECTIVE_CELLS

# Adapter and QLoRA dtypes (``--lora-dtype``, ``--qlora-prep``, issue 16 item 6), in the full matrix only (after
# EXTRA_CELLS, not in the CI subset): bf16 LoRA adapters (peft's get_peft_model with autocast_adapter_dtype=False,
# stepped without a master copy) on all linears without checkpointing and on GPT-2's attention with it (dropout
# on the bf16 adapter path); QLoRA without prepare_model_for_kbit_training (embeddings, norms and lm_head stay
# bf16, so the residual stream does) with and without checkpointing, the second with bf16 adapters too; pure bf16
# LoRA with peft's fp32 adapters (fp32 moments beside bf16 weights) and with bf16 ones (bf16 moments); and two
# rank-64 cells short enough that the optimizer step is the peak (bf16 adapters stepped with bf16 states and
# foreach scratch, no master; pure bf16 with fp32 adapters, whose foreach scratch is fp32).
DTYPE_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, lora_dtype="16bit"),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="lora-attn", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="eager",
         seq_len=64, micro_batch=2, lora_dtype="16bit"),
    Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="qlora-dq", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2, qlora_prep="16bit"),
    Cell(family="llama", hidden=64, layers=3, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=1000,
         method="qlora-nodq", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=32,
         micro_batch=4, lora_dtype="16bit", qlora_prep="16bit"),
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=512,
         method="lora-all", precision="bf16", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1),
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=512,
         method="lora-all", precision="bf16", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, lora_dtype="16bit"),
    Cell(family="llama", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=512,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=16,
         micro_batch=1, lora_rank=64, lora_dtype="16bit"),
    Cell(family="llama", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=512,
         method="lora-all", precision="bf16", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=16,
         micro_batch=1, lora_rank=64),
)


def _ds(**values) -> str:
    return json.dumps(ZeroConfig(**values).to_dict(), sort_keys=True)


# A user's DeepSpeed config (--deepspeed-config, issue 17) in the full matrix only: DeepSpeed's own defaults where
# a config leaves the buckets out (5e8-element reduce bucket, 5e7 prefetch, 1e5 persistence threshold;
# deepspeed/runtime/zero/config.py), which on a tiny model make the reduce buckets the largest tensors of the
# step: ZeRO-2 with one bucket and with overlap_comm's two, ZeRO-3 (its bucket at start-up, every parameter under
# the threshold), and ZeRO-3 with small sub-groups (sub_group_size 4096: several fp32 gradient sub-groups).
DS_DEFAULT_BUCKETS = dict(reduce_bucket_size=500_000_000, stage3_prefetch_bucket_size=50_000_000,
                          stage3_param_persistence_threshold=100_000)
DEEPSPEED_CONFIG_CELLS = (
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="full", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1, zero_config=_ds(**DS_DEFAULT_BUCKETS)),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="lora-all", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, zero_config=_ds(**DS_DEFAULT_BUCKETS, overlap_comm=True)),
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1, zero_config=_ds(**DS_DEFAULT_BUCKETS)),
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1, zero_config=_ds(stage3_param_persistence_threshold=0, sub_group_size=4096)),
)


# Gradient accumulation under DeepSpeed (issue 17 item 2), full matrix only: 2 and 4 micro-batches per step at
# ZeRO 1, 2 and 3 on two ranks, what each stage keeps between micro-batches (ZeRO-1/2's partition buffer and
# ZeRO-1's accumulated gradients, ZeRO-3's gradient partition) on top of the step.
ACCUMULATION_CELLS = tuple(
    Cell(family=family, hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method=method, precision="bf16-mixed", zero=zero, num_ranks=2, ckpt=ckpt, attn="sdpa", seq_len=32,
         micro_batch=1, grad_accum=accum)
    for family, method, zero, ckpt, accum in (
        ("llama", "full", 1, False, 2), ("qwen2", "lora-all", 1, True, 4),
        ("qwen2", "full", 2, True, 2), ("llama", "lora-all", 2, False, 4),
        ("llama", "full", 3, False, 4), ("qwen2", "lora-all", 3, True, 2),
    )
)


# DeepSpeed on three ranks and with overlap_comm set against its default (issue 17 items 4 and 5), full matrix
# only: ZeRO-2 on three ranks, where each rank makes its grads_in_partition when its own first gradient is reduced
# (rank 0's at the end of backward), without and with 2-step accumulation (the first micro-batch's buffer held
# beside it), and one whose rank 0 peaks in layer 0's backward with its buffer (the others earlier without); ZeRO-1 and ZeRO-3 on three ranks; overlap_comm on at ZeRO-2 (a second reduce bucket,
# stage_1_and_2.py setup_buckets) and off at ZeRO-3 (whose default is on); and LoRA under ZeRO-3 without
# accumulation, whose wide adapters (over stage3_param_persistence_threshold) are gathered like the base weights.
DS_RANKS_COMM_CELLS = (
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=1000, method="full", precision="fp32", zero=2, num_ranks=3, ckpt=False, attn="eager", seq_len=64,
         micro_batch=2),
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="full", precision="bf16-mixed", zero=2, num_ranks=3, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, grad_accum=2),
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=512,
         method="full", precision="bf16-mixed", zero=2, num_ranks=3, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="full", precision="bf16-mixed", zero=1, num_ranks=3, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1),
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=3, num_ranks=3, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1),
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="full", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1, zero_config=_ds(overlap_comm=True)),
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=32,
         micro_batch=1, zero_config=_ds(overlap_comm=False)),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=512,
         method="lora-all", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1),
)


# bitsandbytes' AdamW8bit and transformers' Adafactor (``--optimizer adamw-8bit|adafactor``, issue 16 item 2), in the
# full matrix only (the CI subset is near its time budget): per optimizer one full bf16-mixed Llama peaking at the
# optimizer step (fp32 masters stepped one tensor at a time) and one fp32 cell whose states sit on the weights
# themselves; 8-bit AdamW also on LoRA adapters (every adapter under min_8bit_size: 32-bit states).
RECIPE_OPTIMIZER_CELLS = tuple(
    cell
    for opt in ("adamw-8bit", "adafactor")
    for cell in (
        Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
             method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=32,
             micro_batch=1, optimizer=opt),
        Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
             vocab=512, method="full" if opt == "adafactor" else "lora-attn", precision="fp32", zero=0,
             num_ranks=1, ckpt=False, attn="eager", seq_len=64, micro_batch=2, optimizer=opt),
        Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256,
             vocab=2048, method="full", precision="fp32", zero=0, num_ranks=1, ckpt=True, attn="sdpa",
             seq_len=32, micro_batch=1, optimizer=opt),
    )
)


# Activation offloading (``--activation-offload``: torch.autograd.graph.save_on_cpu around forward and loss, issue
# 16 item 4), in the full matrix only (the CI subset is near its time budget): full bf16-mixed Llama without
# checkpointing (every saved tensor and every saved weight copied at pack time), LoRA Llama with checkpointing
# (only each layer's input is packed, by the checkpoint frame; the recomputation stays on the device), and full
# bf16-mixed Llama ZeRO-3 on two ranks (LinearFunctionForZeroStage3 saves the gathered weight: copied whole).
OFFLOAD_CELLS = (
    Cell(family="llama", hidden=128, layers=3, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=256,
         micro_batch=2, activation_offload=True),
    Cell(family="llama", hidden=128, layers=3, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=2, activation_offload=True),
    Cell(family="llama", hidden=128, layers=3, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=3, num_ranks=2, ckpt=False, attn="sdpa", seq_len=256,
         micro_batch=1, activation_offload=True),
)


# torchtune's chunked cross-entropy (``--loss chunked-ce``, issue 16 item 3), in the full matrix only (not the CI
# subset, near its time budget): a Llama whose logits outweigh its layers (vocabulary 16384 on hidden 64, LoRA on
# every linear layer, lm_head frozen), where the standard loss would peak at its backward with 12 bytes per logit;
# and a full bf16-mixed Qwen2 with tied embeddings under checkpointing, micro-batch 4 (each chunk of the sequence
# is then not contiguous: F.linear's matmul copies it, and the copy is saved for lm_head's weight gradient), whose
# logits outweigh its optimizer step; and an fp32 GPT-2 with LoRA on attention, eager attention and 3 chunks
# (torch.chunk of 64 tokens: 22, 22 and 20; in fp32 the upcast is the logits themselves); and full bf16-mixed
# ZeRO-2 on two ranks under checkpointing (DeepSpeed's engine runs the forward; lm_head's per-chunk gradients
# reach its reduce hooks).
LOSS_CELLS = (
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=16384,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=128,
         micro_batch=1, loss="chunked-ce"),
    Cell(family="qwen2", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=8192,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=4, loss="chunked-ce"),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=3072, method="lora-attn", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=64,
         micro_batch=2, loss="chunked-ce", loss_chunks=3),
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=8192,
         method="full", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2, loss="chunked-ce"),
)


# --task dpo (issue 21): TRL's DPOTrainer (planner/profile/trl_dpo.py), one CPU process, fp32 or pure bf16: full
# and LoRA, with a frozen reference copy, the LoRA adapter disabled, or precomputed reference log-probabilities;
# tied embeddings (qwen2, gpt2), checkpointing, eager attention. Each TRL run imports TRL and datasets and tokenizes
# a dataset: the full matrix only.
def _dpo(family: str, hidden: int, vocab: int, method: str, precision: str, reference: str, *, ckpt: bool = False,
         attn: str = "sdpa", seq_len: int = 48, micro_batch: int = 2, optimizer: str = "adamw") -> Cell:
    heads = hidden // HEAD_DIM
    return Cell(family=family, hidden=hidden, layers=2, heads=heads, kv_heads=heads if family == "gpt2" else 2,
                intermediate=2 * hidden if family != "llama" else 3 * hidden, vocab=vocab, method=method,
                precision=precision, zero=0, num_ranks=1, ckpt=ckpt, attn=attn, seq_len=seq_len,
                micro_batch=micro_batch, optimizer=optimizer, task="dpo", reference=reference)


POSTTRAIN_CELLS = (
    _dpo("llama", 64, 512, "full", "fp32", "copy"),
    _dpo("llama", 64, 512, "full", "fp32", "precomputed"),
    _dpo("llama", 64, 512, "lora-all", "fp32", "adapter"),
    _dpo("llama", 64, 512, "lora-all", "fp32", "copy"),
    _dpo("llama", 64, 2048, "full", "fp32", "copy", ckpt=True, micro_batch=4),
    _dpo("qwen2", 96, 1024, "full", "bf16", "copy", seq_len=64),
    _dpo("gpt2", 64, 768, "lora-attn", "fp32", "adapter", attn="eager", seq_len=40),
    _dpo("qwen2", 64, 4096, "full", "fp32", "copy", optimizer="adamw-fused", micro_batch=1, seq_len=32),
)


# TRL SFTTrainer's fused LM head (``--loss trl-fused-lm-head``, issue 19), in the full matrix only (the CI subset
# is near its time budget): a full fp32 Llama whose vocabulary (40000) spans two of TRL's 32768-entry tiles, at
# micro-batch 2 (the shifted hidden states are copied by reshape); LoRA bf16-mixed Qwen2 under checkpointing at
# micro-batch 1 (lm_head frozen: no weight gradient; a 16-bit tile widened to fp32 by the CPU tile ops); a full
# fp32 GPT-2 (lm_head tied to the embedding: the head's fp32 gradient waits for the lookup's); and full bf16-mixed
# ZeRO-2 on two ranks under checkpointing (DeepSpeed's engine runs the fused forward; the head's gradient reaches
# its reduce hooks).
TRL_LOSS_CELLS = (
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=40000,
         method="full", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, loss="trl-fused-lm-head"),
    Cell(family="qwen2", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=8192,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=1, loss="trl-fused-lm-head"),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=3072, method="full", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=64,
         micro_batch=2, loss="trl-fused-lm-head"),
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=8192,
         method="full", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2, loss="trl-fused-lm-head"),
)


# torch DistributedDataParallel on two gloo ranks (ZeRO 0 on 2 ranks), in the full matrix only: the random design
# draws multi-rank cells under DeepSpeed only. A full fp32 Llama (every gradient in DDP's Reducer buckets beside
# .grad) and a LoRA bf16-mixed Qwen2 under checkpointing (only the adapters' gradients are bucketed).
DDP_CELLS = (
    Cell(family="llama", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=192, vocab=1000,
         method="full", precision="fp32", zero=0, num_ranks=2, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2),
    Cell(family="qwen2", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=2, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=1),
)


# Cells of the full matrix only (each tuple's comment says why); the CI subset never picks them.
# The autocast recipe (``--precision bf16-autocast``, issue 16 item 1), full matrix only: fp32 weights with the
# forward under accelerate's autocast, as the HF Trainer runs full fine-tuning without DeepSpeed
# (profile/autocast_run.py; estimate/step/autocast.py). Llama with enough tokens that the end of forward (the
# saved bf16 weight and input casts) peaks; GPT-2 with dropout (CPU SDPA's math path on the bf16 casts) and its
# Conv1D addmm casting the bias too; Qwen2 with tied embeddings and a vocabulary that outweighs its layers (the
# logits: bf16 from the cast lm_head, the loss's fp32 upcast, accelerate's fp32 copy of the output).
PRECISION_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-autocast", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=128,
         micro_batch=2),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="full", precision="bf16-autocast", zero=0, num_ranks=1, ckpt=False, attn="sdpa",
         seq_len=64, micro_batch=2),
    Cell(family="qwen2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=128, vocab=8192,
         method="full", precision="bf16-autocast", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2),
    # checkpointing: every weight's bf16 copy stays in autocast's cache until the forward returns (not saved), and
    # each recomputation re-enters autocast (torch.utils.checkpoint recompute_fn) with a cache of its own
    Cell(family="llama", hidden=128, layers=3, heads=128 // HEAD_DIM, kv_heads=2, intermediate=384, vocab=256,
         method="full", precision="bf16-autocast", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=512,
         micro_batch=4),
)


# The optimizer stepped in backward (``--optimizer-in-backward``, torchtune's optimizer_in_bwd; issue 16 item 2),
# full matrix only: one torch optimizer per parameter stepped in its post-accumulate-grad hook, its gradient then
# freed (profile/optim.py InBackwardOptimizers). Pure bf16 Llama with foreach AdamW (the per-tensor sqrt copy at
# each hook, bf16 moments); fp32 Qwen2 with tied embeddings (one step after both uses have summed) and
# checkpointing; fp32 GPT-2 with fused AdamW, short enough that the backward's gradients would otherwise peak.
OPTIM_IN_BACKWARD_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=64,
         micro_batch=2, optimizer_in_backward=True),
    Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="full", precision="fp32", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, optimizer_in_backward=True),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="full", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=16,
         micro_batch=1, optimizer="adamw-fused", optimizer_in_backward=True),
)


FULL_ONLY_CELLS = (DTYPE_CELLS + RECIPE_OPTIMIZER_CELLS + OFFLOAD_CELLS + LOSS_CELLS + DEEPSPEED_CONFIG_CELLS
                   + ACCUMULATION_CELLS + PRECISION_CELLS + OPTIM_IN_BACKWARD_CELLS + FSDP2_CELLS
                   + POSTTRAIN_CELLS + DS_RANKS_COMM_CELLS + TRL_LOSS_CELLS + DDP_CELLS + PACKING_CELLS
                   + AUTOCAST_LORA_CELLS + QLORA_ZERO3_CELLS + QLORA_FSDP2_CELLS + GRPO_CELLS + SELECTIVE_CELLS
                   + DS_OFFLOAD_CELLS + HSDP_CELLS + FOUR_RANK_FSDP2_CELLS
                   + BASE_AUTOCAST_CELLS + DS_TUTORIAL_CELLS + DS_CONTIGUOUS_CELLS + DS_STAGE0_CELLS
                   + DPO_DEEPSPEED_CELLS)


# Cells for the GPU reference run (``planner profile --device cuda`` with each cell's inputs, committed under
# profiles/gpu/ and compared by ``planner validate --suite gpu-reference``), in neither CPU matrix: the paged
# optimizers run only on CUDA (their states in cudaMallocManaged memory, outside the allocated figures, which the
# estimate leaves out of per_gpu and puts in the device figure), and 8-bit AdamW's CUDA step is one in-place
# kernel where the CPU backend allocates fp32 copies (optim_rules.py). A larger hidden size so that tensors reach
# bitsandbytes' paging threshold (1e5 elements).
GPU_OPTIMIZER_CELLS = tuple(
    Cell(family="llama", hidden=512, layers=2, heads=512 // HEAD_DIM, kv_heads=2, intermediate=1024, vocab=4096,
         method="full", precision=precision, zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=128,
         micro_batch=1, optimizer=opt)
    for opt in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit")
    for precision in ("bf16-mixed", "bf16")
)

