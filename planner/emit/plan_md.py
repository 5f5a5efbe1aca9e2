"""PLAN.md: the plan, its estimate by category, the assumptions, and the command that checks it."""

from __future__ import annotations

import os
import shlex

from planner.emit.ds_config import bucket_sizes
from planner.emit.launch import SMOKE_RUN
from planner.emit.sample_data import SAMPLE_DATASET
from planner.estimate.result import CATEGORIES, Estimate
from planner.specs import Cluster, Loss, Method, ModelSpec, Offload, PeftDtype, Precision, TrainSpec
from planner.units import fmt_count, fmt_gib

PROFILE_STEPS = 3
PROFILE_DIR = "profile"


def model_argument(model: ModelSpec) -> str:
    """What `planner estimate/profile --model` takes for this model."""
    if model.source == "catalog":
        return model.name
    if model.source.startswith("hub:"):
        return model.source[len("hub:") :]
    return os.path.abspath(model.source)  # the command may run from anywhere (the bundle, for one)


def _fsdp2_flags(t: TrainSpec) -> list[str]:
    """FSDP2's flags (cli/fsdp_options.py): --reduce-dtype applies under bf16-mixed only."""
    c = t.parallelism.fsdp_config
    return ["--engine", "fsdp2", "--reshard" if c.reshard_after_forward else "--no-reshard",
            *(["--fsdp-offload"] if c.cpu_offload else []),
            *(["--reduce-dtype", c.reduce_dtype or "bf16"] if t.precision is Precision.BF16_MIXED else []),
            *(["--hsdp", str(c.replicate_degree)] if c.replicate_degree > 1 else [])]


def profile_argv(model: ModelSpec, train: TrainSpec, cluster: Cluster) -> list[str]:
    """`planner profile` with every training flag of the plan (the flags `planner estimate` shares)."""
    t = train
    argv = [
        "planner", "profile",
        "--model", model_argument(model),
        "--gpus", str(cluster.num_gpus),
        "--method", t.method.value,
        "--precision", t.precision.value,
        "--optimizer", t.optimizer.value,
        *(_fsdp2_flags(t) if t.uses_fsdp2 else ["--zero", str(t.zero_stage), "--offload", t.offload.value]),
        *(["--engine", "deepspeed"] if t.uses_deepspeed and t.zero_stage == 0 else []),
        "--micro-batch", str(t.micro_batch),
        "--grad-accum", str(t.grad_accum),
        "--seq-len", str(t.seq_len),
        "--grad-checkpointing" if t.grad_checkpointing else "--no-grad-checkpointing",
        *(["--activation-offload"] if t.activation_offload else []),
        *(["--optimizer-in-backward"] if t.optimizer_in_backward else []),
        *(["--compile"] if t.compile else []),
        *(["--packing"] if t.packing else []),
        *([f"--selective-ac {t.selective_ac}"] if t.selective_ac else []),
        "--attn", t.attn_impl.value,
    ]  # fmt: skip
    if t.method is not Method.FULL:
        argv += [
            "--lora-rank", str(t.lora.rank),
            "--lora-alpha", str(t.lora.alpha),
            "--lora-dropout", str(t.lora.dropout),
            "--lora-targets", ",".join(t.lora.targets),
        ]  # fmt: skip
        if t.lora.modules_to_save:
            argv += ["--modules-to-save", ",".join(t.lora.modules_to_save)]
    if t.method is Method.QLORA:
        argv += ["--quant-type", t.quant.quant_type.value]
        argv += ["--double-quant" if t.quant.double_quant else "--no-double-quant"]
    if t.dropout is not None:
        argv += ["--dropout", str(t.dropout)]
    if t.loss.kind is not Loss.STANDARD:
        argv += ["--loss", t.loss.kind.value]
        if t.loss.kind is Loss.CHUNKED_CE:
            argv += ["--loss-chunks", str(t.loss.chunks)]
    argv += ["--steps", str(PROFILE_STEPS), "--device", "cuda", "--out", PROFILE_DIR]
    return argv


# The loss recipe (TrainSpec.loss) as PLAN.md names it, and what train.py needs installed for it.
LOSS_WORDS = {
    Loss.STANDARD: "transformers' own (ForCausalLMLoss on the full logits, upcast to fp32)",
    Loss.CHUNKED_CE: "torchtune's CEWithChunkedOutputLoss in {chunks} chunks (lm_head applied per chunk)",
    Loss.FUSED_LINEAR_CE: "Liger's fused linear cross-entropy (the logits never materialise)",
    Loss.TRL_FUSED_LM_HEAD: "TRL SFTTrainer's fused LM head (loss_type nll: lm_head in tiles of 4096 tokens x 32768 "
                            "vocabulary entries)",
}
LOSS_INSTALL = {
    Loss.CHUNKED_CE: "The chunked loss is torchtune's: install it with `pip install --no-deps torchtune==0.6.1` "
                     "(train.py loads only its loss file; torchtune's other dependencies are not needed).",
    Loss.FUSED_LINEAR_CE: "The fused loss is Liger-Kernel's (Triton kernels, CUDA GPUs only): install it with "
                          "`pip install liger-kernel`; train.py turns on its fused linear cross-entropy alone "
                          "(TrainingArguments use_liger_kernel with liger_kernel_config).",
    Loss.TRL_FUSED_LM_HEAD: "The fused LM head is TRL's: install it with `pip install trl==1.16.0`; train.py adds "
                            "it to the model (trl.trainer.utils.add_fused_lm_head) and computes SFTTrainer's loss "
                            "from it.",
}


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> list[str]:
    out = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return out


def _md(text: str) -> str:
    """A user string inside a Markdown table cell or inline code: one line, no pipes or backticks."""
    return "".join(ch if ch.isprintable() else "?" for ch in text).replace("|", "\\|").replace("`", "'")


def precision_notes(train: TrainSpec) -> list[str]:
    """How train.py holds weights for this precision and method (what the estimate's split assumes)."""
    t, notes = train, []
    mixed = t.precision.has_master_weights
    if t.method is Method.FULL and t.precision.autocast_dtype:
        notes.append(
            "The Trainer keeps fp32 weights, gradients and optimizer states and runs the forward under "
            f"torch.autocast ({t.precision.autocast_dtype}): the estimate counts autocast's 16-bit copies of "
            "the weights and matmul inputs saved for backward."
        )
    elif t.method is Method.FULL and mixed and not t.uses_deepspeed:
        notes.append(
            "Without DeepSpeed the Trainer keeps fp32 weights and gradients and computes in 16 bits under "
            "torch.autocast: the same 16 bytes per parameter with AdamW as 16-bit weights plus an fp32 master "
            "copy, split differently between params, grads and optimizer states, plus autocast's 16-bit copies "
            f"of the weights during forward and backward. `--precision {t.precision.value.split('-')[0]}-autocast` "
            "estimates that recipe (this estimate is planner's 16-bit weights with fp32 masters)."
        )
    elif t.method is Method.FULL and mixed:
        notes.append(
            "DeepSpeed keeps 16-bit weights and gradients on the GPU and the fp32 master weights with the "
            "optimizer states" + (", whole on every GPU at ZeRO stage 0." if t.zero_stage == 0 else
                                  ", partitioned by ZeRO.")
        )
    if t.method is not Method.FULL and t.lora_dtype is PeftDtype.FP32:
        notes.append(
            f"The frozen base is loaded in {t.precision.compute_dtype}; peft keeps the LoRA adapters (and their "
            "gradients and optimizer states) in fp32."
        )
        if t.precision is Precision.BF16_BASE_AUTOCAST:
            notes.append("The Trainer (bf16=True) runs the forward under bf16 torch.autocast: the estimate counts "
                         "the bf16 casts of peft's fp32 adapter inputs and the adapters' cached bf16 copies.")
        elif t.method is Method.LORA and t.precision in (Precision.BF16_MIXED, Precision.BF16) and not (
                t.uses_deepspeed or t.uses_fsdp2):
            # accelerate's prepare_model wraps the forward in autocast whatever the weights' dtype
            notes.append("The Trainer's bf16=True also runs this bf16 base's forward under torch.autocast, which "
                         "this estimate (no autocast) does not count; `--precision bf16-base-autocast` estimates "
                         "that recipe (peft's fp32 adapter inputs saved as bf16 casts).")
    elif t.method is not Method.FULL:
        notes.append(
            f"The frozen base and the LoRA adapters are in {t.precision.compute_dtype} (get_peft_model with "
            "autocast_adapter_dtype=False); the Trainer steps the adapters as they are, with optimizer states in "
            "their dtype and no fp32 master copy" + (" (DeepSpeed keeps fp32 masters)." if t.uses_deepspeed else ".")
        )
    if t.method is Method.QLORA and t.qlora_prep is PeftDtype.FP32:
        notes.append(
            "peft's prepare_model_for_kbit_training casts every layer that stays unquantized (embeddings, norms, "
            "output head) to fp32."
        )
    elif t.method is Method.QLORA:
        notes.append(
            f"prepare_model_for_kbit_training is not called: the layers that stay unquantized (embeddings, norms, "
            f"output head) stay in {t.precision.compute_dtype} (torchtune's and Unsloth's QLoRA)."
        )
    if t.method is Method.QLORA and t.zero_stage == 3:
        notes.append(
            f"ZeRO-3 partitions the 4-bit weights like any 16-bit parameter: train.py stores them in "
            f"{t.precision.compute_dtype} (bnb_4bit_quant_storage, peft's QLoRA with ZeRO-3 recipe) and loads "
            "without a device_map; each weight's quantization state stays whole on every GPU."
        )
    if t.attn_impl.value == "flash_attention_2":
        notes.append("flash_attention_2 needs the flash-attn package on the GPU hosts; `--attn-impl sdpa` otherwise.")
    if t.precision.value == "bf16" and t.uses_deepspeed:
        notes.append("Pure bf16 under DeepSpeed still keeps fp32 master partitions (DeepSpeed's bf16 optimizer).")
    return notes


FSDP2_FILES = [
    "- `launch.sh`: `torchrun` running train.py's own FSDP2 loop (`--engine fsdp2`): fully_shard on every decoder "
    "layer, then the root, the layout this estimate describes (multi-node form when the plan spans nodes).",
    "- FSDP2's alternative launch: `accelerate launch --config_file accelerate_config.yaml train.py --engine trainer` "
    "runs accelerate's FSDP2 through the HF Trainer; it wraps the decoder layers too, but under bf16 reduces the "
    "gradients in bf16 and its memory was not checked against this estimate (see the file's header).",
]


def render_plan_md(
    model: ModelSpec,
    train: TrainSpec,
    cluster: Cluster,
    estimate: Estimate,
    *,
    global_batch_size: int,
    model_ref: str | None,
    dataset: str,
    has_ds_config: bool,
    label: str,
) -> str:
    t = train
    method = t.method.value
    if t.method is not Method.FULL:
        method += f" (rank {t.lora.rank}, alpha {t.lora.alpha}, dropout {t.lora.dropout}, {', '.join(t.lora.targets)})"
    if t.method is Method.QLORA:
        method += f", base in {t.quant.quant_type.value}{' with double quantization' if t.quant.double_quant else ''}"
    offload = "" if t.offload is Offload.NONE else f", offload {t.offload.value} to CPU"
    plan_rows = [
        ("model", f"`{_md(model.name)}` ({fmt_count(estimate.num_params)} parameters, "
                  f"{fmt_count(estimate.num_trainable_params)} trainable)"),
        ("weights", f"`{_md(model_ref)}`" if model_ref else "not known: pass `--model` to launch.sh"),
        ("method", method),
        ("precision / optimizer", f"{t.precision.value} / {t.optimizer.value}"),
        ("GPUs", f"{cluster.num_gpus} x {cluster.gpu.name} on {cluster.num_nodes} node(s)"),
        ("parallelism", f"DeepSpeed ZeRO stage {t.zero_stage}{offload}" if t.uses_deepspeed else
                        ("data parallel (DDP)" if cluster.num_gpus > 1 else "one GPU")),
        ("batch", f"micro-batch {t.micro_batch} x accumulation {t.grad_accum} x {cluster.num_gpus} GPUs "
                  f"= {global_batch_size} sequences per step"),
        ("sequence length", f"{t.seq_len} tokens ({global_batch_size * t.seq_len:,} tokens per step)"),
        ("activation checkpointing", "on (every layer)" if t.grad_checkpointing else
         f"selective ({t.selective_ac}, torchtitan's policy)" if t.selective_ac else "off"),
        ("activation offloading", "on (torch.autograd.graph.save_on_cpu around the forward and loss)"
                                  if t.activation_offload else "off"),
        *([("torch.compile", "on (TrainingArguments(torch_compile=True), inductor); the memory figures are "
                              "eager PyTorch's (an upper bound without activation checkpointing, not with it)")]
                             if t.compile else []),
        *([("sequence packing", "on (documents packed into rows; each micro-batch flattened into one row with "
                                "position ids reset per document, as TRL's packing=True runs it padding-free)")]
          if t.packing else []),
        ("attention", t.attn_impl.value),
        ("loss", LOSS_WORDS[t.loss.kind].format(chunks=t.loss.chunks)),
        ("dataset", f"`{_md(dataset)}`"),
    ]  # fmt: skip
    est = estimate
    mem_rows = [(c, fmt_gib(v)) for c, v in est.per_gpu.by_category().items() if c in CATEGORIES]
    mem_rows += [
        ("**allocated (sum)**", f"**{fmt_gib(est.per_gpu.total_bytes)}**"),
        ("reserved (caching allocator)", fmt_gib(est.reserved_bytes)),
        ("device (what nvidia-smi shows)", fmt_gib(est.device_bytes)),
        ("GPU capacity", fmt_gib(est.capacity_bytes)),
        (f"usable with a {est.margin:.0%} margin", fmt_gib(est.usable_bytes)),
        ("headroom", fmt_gib(est.headroom_bytes)),
    ]
    if est.cpu_bytes_per_node:
        what = "offloaded states" + (" and activations" if est.train.activation_offload else "")
        if est.train.activation_offload and est.train.offload.value == "none":
            what = "offloaded activations"
        mem_rows.append((f"CPU RAM per node ({what})", fmt_gib(est.cpu_bytes_per_node)))

    lines = [
        f"# Training plan: {_md(model.name)}",
        "",
        f"{_md(label)}",
        "",
        *_table(plan_rows, ("setting", "value")),
        "",
        f"## Estimated memory per GPU (peak during {est.peak_phase})",
        "",
        *_table(mem_rows, ("category", "GiB")),
        "",
        f"The plan {'fits' if est.fits else 'does NOT fit'}: the device peak must stay under the usable capacity.",
    ]
    if est.throughput is not None:
        tp = est.throughput
        lines += [
            "",
            f"Estimated speed: {tp.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, {tp.step_time_s:.2f} s per "
            f"optimizer step, at an assumed model FLOPs utilisation of {tp.mfu:.0%}.",
        ]
    lines += ["", "## Assumptions", ""]
    lines += [f"- {_md(note)}" for note in est.notes]
    sizes = bucket_sizes(model, t)
    if t.uses_deepspeed and t.zero_stage == 0:
        lines.append("- DeepSpeed at ZeRO stage 0: the Trainer's torch AdamW in DeepSpeed's FP16_UnfusedOptimizer "
                     "(fp32 masters, fp32 gradients at the step), gradients all-reduced in flat buckets of 5e8 "
                     "elements at the end of backward; see ds_config.json.")
    elif t.uses_deepspeed:
        lines.append(
            "- DeepSpeed buckets (elements, "
            + (f"from hidden size {model.hidden_size}" if t.parallelism.zero_config.is_default
               else "from the DeepSpeed config given") + "): reduce "
            f"{sizes['reduce_bucket_size']:,}"
            + (f", all-gather {sizes['allgather_bucket_size']:,}" if t.zero_stage < 3 else
               f", ZeRO-3 prefetch {sizes['stage3_prefetch_bucket_size']:,}, parameters under "
               f"{sizes['stage3_param_persistence_threshold']:,} elements stay unpartitioned")
            + "; see ds_config.json."
        )  # fmt: skip
    lines += [
        "- Data: the texts are tokenized, joined with the end-of-text token and cut into rows of exactly "
        f"{t.seq_len} tokens (no padding), so every micro-batch has the planned shape.",
        *[f"- {note}" for note in precision_notes(train)],
        *([f"- {LOSS_INSTALL[t.loss.kind]}"] if t.loss.kind in LOSS_INSTALL else []),
        "- Another number of GPUs changes the global batch and, under ZeRO, the memory per GPU: "
        "re-plan with `planner recommend` rather than editing the numbers.",
        "- Tested with torch 2.13, transformers 5.23, accelerate 1.15, peft 0.21, deepspeed 0.19.8, "
        "bitsandbytes 0.50 (the script also needs `datasets` for hub datasets).",
        "",
        "## Files",
        "",
        "- `train.py`: the training script; the plan is its defaults (`python train.py --help`).",
        "- `accelerate_config.yaml`: processes, machines, "
        + ("DeepSpeed plugin." if has_ds_config else "mixed precision."),
    ]
    if has_ds_config:
        lines.append("- `ds_config.json`: ZeRO stage, offload, buckets, batch sizes, clipping, bf16/fp16.")
    lines += [
        *(FSDP2_FILES if train.uses_fsdp2 else
          ["- `launch.sh`: the `accelerate launch` command (multi-node form in its comments)."]),
        "- `model_config.json`: the model's config.json, for `--random-init` runs and for `planner profile`.",
        f"- `{SAMPLE_DATASET}`: a few generated texts for the smoke run (a dataset shorter than one optimizer step "
        "is repeated to fill it).",
        "- `.planner-bundle.json`: what planner wrote, with hashes: a re-run of `planner recommend --out` replaces "
        "only files you have not changed (`--force` overwrites changed ones).",
        "",
        "## Run it",
        "",
        "launch.sh starts accelerate as `$PYTHON -m accelerate.commands.launch` (`PYTHON` defaults to `python3`): "
        "set `PYTHON=/path/to/venv/bin/python` when the environment with accelerate, torch and transformers is not "
        "the active one.",
        "",
        "```bash",
        f"./launch.sh {SMOKE_RUN}   # smoke run: two optimizer steps on the bundled sample",
        f"./launch.sh                    # the full run: one epoch over {_md(dataset)}",
        "./launch.sh --help             # every option of train.py",
        "```",
        "",
        f"The full run reads `{_md(dataset)}` (one JSON object with a `text` field per line, relative paths "
        "next to train.py), or pass `--dataset FILE_OR_HUB_NAME`.",
        "",
        "Without weights or a GPU, a CPU smoke run with random weights checks the bundle itself (small models "
        "only: the whole model is built in host RAM; CPU runs take bf16 or fp32, not fp16):",
        f"`./launch.sh --cpu --random-init model_config.json --tokenizer bytes --seq-len 64 {SMOKE_RUN}`.",
        "",
        "## Check the estimate",
        "",
        f"Profile the same configuration for {PROFILE_STEPS} steps on {cluster.num_gpus} GPU(s) of one machine "
        "(random weights, nothing is downloaded), then compare the measured peaks with this estimate:",
        "",
        "```bash",
        shlex.join(profile_argv(model, train, cluster)),
        f"planner compare {PROFILE_DIR}",
        "```",
    ]
    if cluster.num_nodes > 1:
        lines += [
            "",
            f"The plan spans {cluster.num_nodes} nodes; a profile on one machine with fewer ranks measures more "
            "memory per GPU under ZeRO (fewer shards), so treat it as an upper bound.",
        ]
    return "\n".join(lines) + "\n"
