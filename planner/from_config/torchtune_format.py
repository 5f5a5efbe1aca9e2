"""torchtune recipe YAML (recipes/configs/*), read with torchtune's own field names and defaults."""

from __future__ import annotations

from typing import Any

from planner.from_config.compile_fields import torchtune_compile
from planner.from_config.fields import TORCHTUNE_MODELS, TORCHTUNE_NO_MEMORY, TORCHTUNE_OPTIMIZERS
from planner.from_config.fsdp_fields import torchtune_fsdp
from planner.from_config.loss_fields import torchtune_loss
from planner.from_config.packing_fields import torchtune_packing
from planner.from_config.reader import Reader, packing_note
from planner.from_config.selective_fields import torchtune_checkpointing
from planner.specs import AttnImpl, LoraSpec, Method, PeftDtype, Precision, QuantSpec


def _component(r: Reader, key: str) -> str | None:
    section = r.data.get(key)
    if not isinstance(section, dict):
        return None
    r.used.add(key)
    value = section.get("_component_")
    return value if isinstance(value, str) else None


def _sub(r: Reader, section: str, key: str, default: Any = None) -> Any:
    value = (r.data.get(section) or {}).get(key) if isinstance(r.data.get(section), dict) else None
    if value is not None:
        r.used.add(f"{section}.{key}")
    return default if value is None else value


def torchtune(r: Reader) -> dict[str, Any]:
    """torchtune recipes/configs/*: the model builder names the architecture and the method; the recipe's own
    fields (batch_size, gradient_accumulation_steps, dtype, enable_activation_checkpointing) the run."""
    r.no_memory = TORCHTUNE_NO_MEMORY
    torchtune_fsdp(r)  # fsdp_cpu_offload, fsdp_reshard_after_forward: the distributed recipes' FSDP2
    for key, ok in (("fsdp_sharding_strategy", "FULL_SHARD"), ("tensor_parallel_dim", 1),
                    ("data_parallel_replicate_dim", 1), ("data_parallel_shard_dim", -1)):
        if r.data.get(key, ok) != ok:
            r.used.add(key)
            r.refuse(f"{key} {r.data[key]!r}", f"is not modelled; planner models FSDP2 over every rank ({key} {ok}).")
        if key in r.data:
            r.used.add(key)
    if r.get("custom_sharded_layers"):
        r.notes.append("custom_sharded_layers shards those modules in units of their own; planner estimates "
                       "torchtune's default layout (one root group for embeddings, norm and head).")
    # optimizer_in_bwd: torchtune's per-parameter optimizers stepped in post-accumulate-grad hooks
    # (training/memory.py register_optim_in_bwd_hooks): --optimizer-in-backward
    in_backward = bool(r.flag("optimizer_in_bwd", False))
    offload = bool(r.flag("enable_activation_offloading", False))
    if offload:
        r.notes.append("enable_activation_offloading: planner models torch.autograd.graph.save_on_cpu; torchtune's "
                       "OffloadActivations also keeps parameters and tensors under 1 KiB on the GPU (less host RAM, "
                       "no device copy of a weight in backward) and, with use_streams, up to 5 packed tensors on "
                       "the GPU in forward.")
    loss = torchtune_loss(r, _component(r, "loss"))
    builder = _component(r, "model") or ""
    leaf = builder.rsplit(".", 1)[-1]
    method = Method.QLORA if leaf.startswith("qlora_") else Method.LORA if leaf.startswith("lora_") else Method.FULL
    base = leaf.split("_", 1)[1] if method is not Method.FULL else leaf
    if _sub(r, "model", "use_dora", False) or "dora" in leaf:
        r.refuse(f"model: {builder}", "(DoRA) is not modelled.")
    hub = TORCHTUNE_MODELS.get(base)
    if hub is None:
        r.notes.append(f"torchtune builder {builder!r} has no known Hugging Face model; give --model.")
    r.set_model(hub, "model._component_")
    if hub:
        r.notes.append(f"model._component_ {builder} builds {hub}.")
    targets: list[str] = []
    names = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
    for m in _sub(r, "model", "lora_attn_modules", []) or []:
        if m not in names:
            r.refuse(f"model.lora_attn_modules: {m}", "is not a torchtune attention projection.")
        targets.append(names[m])
    if _sub(r, "model", "apply_lora_to_mlp", False):
        targets += ["gate_proj", "down_proj", "up_proj"]  # torchtune w1, w2, w3
    if _sub(r, "model", "apply_lora_to_output", False):
        targets.append("lm_head")
    rank = _sub(r, "model", "lora_rank", 8)
    alpha = _sub(r, "model", "lora_alpha", 16.0)
    dropout = _sub(r, "model", "lora_dropout", None)
    if method is not Method.FULL and dropout is None:
        r.notes.append("model.lora_dropout is unset: the torchtune builders' default, 0.0.")
    for k, v in (("model.lora_rank", rank), ("model.lora_alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise r.bad(k, v, "a positive number")
    if isinstance(rank, float):
        raise r.bad("model.lora_rank", rank, "a whole number")
    lora = LoraSpec(rank=rank, alpha=max(1, round(alpha)), dropout=float(dropout or 0.0),
                    targets=tuple(targets) or ("all-linear",))
    quant = QuantSpec()
    if method is Method.QLORA:
        r.notes.append("torchtune's QLoRA holds the base in torchao NF4 (64-value blocks, 8-bit scalers per 256 "
                       "blocks): planner counts it as bitsandbytes NF4 with double quantization.")
    dtype = r.text("dtype", "fp32")
    precision = {"bf16": Precision.BF16, "fp32": Precision.FP32}.get(dtype)
    if precision is None:
        r.refuse(f"dtype: {dtype}", "is not modelled; torchtune trains in bf16 or fp32.")
    # torchtune builds the whole model, LoRA adapters included, under training.set_default_dtype(dtype) and never
    # upcasts: adapters and (QLoRA) the norms, embeddings and output head stay in bf16 (--lora-dtype and
    # --qlora-prep 16bit); its AdamW steps the bf16 adapters with bf16 states.
    dtypes: dict[str, Any] = {}
    if precision is Precision.BF16 and method is not Method.FULL:
        dtypes["lora_dtype"] = PeftDtype.BIT16
        r.notes.append("torchtune keeps LoRA adapters in bf16 (--lora-dtype 16bit)"
                       + (" and QLoRA's unquantized layers too (--qlora-prep 16bit)." if method is Method.QLORA
                          else "."))
        if method is Method.QLORA:
            dtypes["qlora_prep"] = PeftDtype.BIT16
    optim = _component(r, "optimizer")
    if optim not in TORCHTUNE_OPTIMIZERS:
        r.refuse(f"optimizer: {optim}", "is an optimizer planner has no memory rule for.")
    seq = _sub(r, "tokenizer", "max_seq_len", None)
    if seq is None:
        r.notes.append("tokenizer.max_seq_len is null: torchtune does not truncate, so rows are as long as the "
                       "longest sample; the estimate uses planner's default sequence length (set --seq-len).")
    elif isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise r.bad("tokenizer.max_seq_len", seq, "a whole number from 1")
    else:
        r.set_fields.add("seq_len")
    packed = _sub(r, "dataset", "packed", False)
    packing_note(r, bool(packed), "tokenizer.max_seq_len")
    r.set_fields |= {k for k, f in (("micro_batch", "batch_size"), ("grad_accum", "gradient_accumulation_steps"))
                     if r.has(f)}
    for key in ("model", "tokenizer", "dataset"):
        r.used.add(key)
        section = r.data.get(key)
        for k in section if isinstance(section, dict) else ():
            if f"{key}.{k}" not in r.used and k != "_component_":
                r.ignored[f"{key}.{k}"] = "does not change memory or time"
    ckpt, selective_ac = torchtune_checkpointing(r)
    return dict(method=method, precision=precision, optimizer=TORCHTUNE_OPTIMIZERS[optim], lora=lora, quant=quant,
                loss=loss, compile=torchtune_compile(r), packing=torchtune_packing(r, bool(packed)),
                selective_ac=selective_ac,
                micro_batch=r.whole("batch_size", 1), seq_len=seq or 2048,
                grad_accum=r.whole("gradient_accumulation_steps", 1),
                grad_checkpointing=ckpt,
                activation_offload=offload, attn_impl=AttnImpl.SDPA, optimizer_in_backward=in_backward, **dtypes)


__all__ = ["torchtune"]
