"""The type of every shared option (typer's ``Annotated`` declarations: flag names, help), read by
``options.TrainingFlags`` and the commands' own signatures; ``options`` re-exports them."""

from __future__ import annotations

from typing import Annotated

import typer

from planner.specs import LOSS_CHUNKS_HELP, LOSS_HELP, REFERENCE_HELP, SELECTIVE_AC_HELP, TASK_HELP
from planner.specs.packing import PACKING_HELP

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Catalog name, path to config.json or model dir, "
                                               "or hub id (with --from: instead of the config's model).")]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow configs that ask for remote code (auto_map).")
]
GpuOpt = Annotated[
    str, typer.Option("--gpu", help="Accelerator from 'planner gpus', or 'auto' to read local GPUs via NVML.")
]
GpusOpt = Annotated[int, typer.Option("--gpus", help="Total number of GPUs (data-parallel ranks).")]
NodesOpt = Annotated[int, typer.Option("--nodes", help="Number of nodes; --gpus must be divisible by it.")]
HostRamOpt = Annotated[
    float | None,
    typer.Option("--host-ram", "--host-ram-gib", metavar="GIB",
                 help="Host RAM per node for offload (offloaded states, DeepSpeed's pinned buffers, offloaded activations), in GiB "
                      "(2^30 bytes); rows whose offload needs more do not fit. Default: not checked, and offload "
                      "rows say so."),
]
MethodOpt = Annotated[str | None, typer.Option("--method", help="full, lora or qlora (default: all).")]
ZeroOpt = Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3 (default: all).")]
OffloadOpt = Annotated[
    str | None, typer.Option("--offload", help="none, optimizer, optimizer+params (default: all valid).")
]
PrecisionOpt = Annotated[str, typer.Option("--precision", help=(
    "bf16-mixed (default; fp16-mixed on a GPU without bf16, with a note): 16-bit weights and gradients, fp32 master weights (DeepSpeed's bf16); fp16-mixed: "
    "the same in fp16; bf16-autocast / fp16-autocast: fp32 weights, gradients and optimizer states, forward "
    "under torch.autocast (the HF Trainer's bf16=True / fp16=True without DeepSpeed; Lightning's bf16-mixed / "
    "16-mixed); bf16 (alias bf16-true): pure bf16, no master copy; fp32 (alias 32-true); bf16-base-autocast: "
    "LoRA on a bf16 base with peft's fp32 adapters, forward under bf16 autocast (the HF Trainer's bf16=True on a "
    "model loaded in bf16, without DeepSpeed)."))]
OptimizerOpt = Annotated[
    str, typer.Option("--optimizer", help="adamw (torch foreach, the default), adamw-fused (torch fused=True), adamw-8bit (bitsandbytes, 8-bit states), paged-adamw, paged-adamw-8bit (bitsandbytes, states in CUDA unified memory), sgd, adafactor (transformers, factored; no ZeRO for these three kinds).")
]
LoraRankOpt = Annotated[int, typer.Option("--lora-rank", help="LoRA rank r.")]
LoraAlphaOpt = Annotated[int, typer.Option("--lora-alpha", help="LoRA alpha.")]
LoraDropoutOpt = Annotated[float | None, typer.Option(
    "--lora-dropout", help="LoRA dropout probability [default: 0.05; 0 where peft adapts MoE expert or router "
    "parameters (lora.ParamWrapper refuses dropout)].")]
LoraTargetsOpt = Annotated[
    str, typer.Option("--lora-targets", help="'all-linear' or comma-separated module names (q_proj,v_proj).")
]
ModulesToSaveOpt = Annotated[
    str, typer.Option("--modules-to-save", help="Comma-separated modules trained in full beside LoRA.")
]
LoraDtypeOpt = Annotated[str, typer.Option(
    "--lora-dtype", help="LoRA adapter dtype: fp32 (peft's default, autocast_adapter_dtype=True) or 16bit (the "
    "model's compute dtype, as torchtune and Unsloth keep them; stepped without an fp32 master copy).")]
QloraPrepOpt = Annotated[str, typer.Option(
    "--qlora-prep", help="QLoRA's unquantized parameters (embeddings, norms, lm_head): fp32 (peft's "
    "prepare_model_for_kbit_training upcasts them, the default) or 16bit (kept in the compute dtype, as torchtune "
    "and Unsloth do).")]
QuantTypeOpt = Annotated[str, typer.Option("--quant-type", help="QLoRA 4-bit type: nf4 or fp4.")]
DoubleQuantOpt = Annotated[
    bool, typer.Option("--double-quant/--no-double-quant", help="QLoRA double quantization of the constants.")
]
MicroBatchOpt = Annotated[int, typer.Option("--micro-batch", "-b", help="Micro-batch size per GPU (sequences).")]
SeqLenOpt = Annotated[
    int | None,
    typer.Option("--seq-len", "-s", help="Sequence length in tokens (default: 2048, or the model's limit if lower)."),
]
DEFAULT_SEQ_LEN = 2048
GradAccumOpt = Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")]
CheckpointingOpt = Annotated[
    bool, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Activation checkpointing, every layer.")
]
ActivationOffloadOpt = Annotated[
    bool,
    typer.Option("--activation-offload/--no-activation-offload",
                 help="Copy saved activations to host RAM in forward and back in backward "
                      "(torch.autograd.graph.save_on_cpu around the forward; default: off)."),
]
OptimizerInBackwardOpt = Annotated[
    bool,
    typer.Option("--optimizer-in-backward/--no-optimizer-in-backward",
                 help="Step each parameter's own optimizer in its post-accumulate-grad hook during backward and free "
                      "its gradient (torchtune's optimizer_in_bwd): the gradients are never all alive. Full "
                      "fine-tuning on one GPU without accumulation, torch AdamW/SGD, --precision bf16, fp32 or "
                      "bf16-autocast (default: off)."),
]
CompileOpt = Annotated[
    bool,
    typer.Option("--compile/--no-compile",
                 help="Wrap the model in torch.compile (inductor), as the HF Trainer's torch_compile=True does; the "
                      "estimate keeps eager's activations: an upper bound without --grad-checkpointing, not with it "
                      "(default: off)."),
]
PackingOpt = Annotated[bool, typer.Option("--packing/--no-packing", help=PACKING_HELP)]
SelectiveAcOpt = Annotated[str, typer.Option("--selective-ac", help=SELECTIVE_AC_HELP)]
LossOpt = Annotated[str, typer.Option("--loss", help=LOSS_HELP)]
LossChunksOpt = Annotated[int, typer.Option("--loss-chunks", help=LOSS_CHUNKS_HELP)]
TaskOpt = Annotated[str, typer.Option("--task", help=TASK_HELP)]
ReferenceOpt = Annotated[str, typer.Option("--reference", help=REFERENCE_HELP)]
AttnOpt = Annotated[str, typer.Option("--attn", help="Attention implementation: eager, sdpa, flash_attention_2.")]
DropoutOpt = Annotated[
    float | None, typer.Option("--dropout", help="Override the model's dropout probabilities (default: config's).")
]
AllowLongerOpt = Annotated[
    bool, typer.Option("--allow-longer", help="Allow a sequence longer than the model's position limit.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
TokensOpt = Annotated[
    str,
    typer.Option("--tokens", help="Tokens to train on, for time and cost: 2000000000, 2e9, 2B, 500M, 1.5T."),
]

MarginOpt = Annotated[float, typer.Option("--margin", help="Safety margin: keep this share of GPU memory free.")]
PriceOpt = Annotated[float, typer.Option("--price-per-gpu-hour", help="Price of one GPU-hour, for cost.")]
MfuOpt = Annotated[
    float | None,
    typer.Option("--mfu", help="Override the step-time model with one model FLOPs utilisation, in (0, 1] (default: "
                 "the per-phase model checked against published runs, reports/time_accuracy.md)."),
]
# One configuration (profile runs exactly one) instead of "all": concrete --method, --zero and --offload.
MethodOneOpt = Annotated[str, typer.Option("--method", help="full, lora or qlora.")]
ZeroOneOpt = Annotated[int, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3 (0: plain / DDP).")]
OffloadOneOpt = Annotated[str, typer.Option("--offload", help="none, optimizer, optimizer+params.")]
