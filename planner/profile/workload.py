"""The profiled workload: a real transformers model, LoRA / QLoRA, checkpointing, data and the loss.

The model is built from the raw config dict (``ModelSpec.config``) with random, seeded weights in the
planned dtype, or loaded from ``--weights DIR``. QLoRA goes through transformers' own bitsandbytes path
(``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))``), with random weights saved to a
temporary directory first when no weights are given, then peft's ``prepare_model_for_kbit_training``, the
QLoRA recipe the estimator (estimate/states.py) and the emitted train.py follow: every parameter that is not
4-bit (embeddings, norms, lm_head, biases) is cast to fp32, and checkpointing is enabled through it;
``--qlora-prep 16bit`` skips the call (torchtune's and Unsloth's 16-bit QLoRA) and enables checkpointing as
for LoRA. LoRA adapters come from peft's ``get_peft_model`` with ``autocast_adapter_dtype`` True (fp32
adapters, the default) or False (``--lora-dtype 16bit``: the compute dtype).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from planner.errors import PlannerError
from planner.specs import AttnImpl, Method, PeftDtype, Precision, TrainSpec

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Dropout probabilities of the supported families' configs (transformers configuration_<family>.py).
DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "activation_dropout",
)
# Bytes of UTF-8 text per token, used to turn a JSONL line into a token count when no tokenizer is given
# (a common rule of thumb for English BPE vocabularies).
BYTES_PER_TOKEN = 4


@dataclass
class Built:
    model: torch.nn.Module  # what trains: the HF model, or the peft model around it
    hf_model: torch.nn.Module  # the transformers PreTrainedModel (for loss_function and config)
    vocab_size: int
    notes: list[str]


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def preload(model_config: dict[str, Any], train: TrainSpec) -> None:
    """Import every module the run will need before recording starts (first imports take seconds, and
    import-time tensors are not part of the workload)."""
    from transformers import AutoModelForCausalLM  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    _quiet_transformers()
    config = hf_config(model_config, train)
    try:
        MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise PlannerError(f"transformers has no causal-LM class for model type {config.model_type!r}.") from None
    if train.method is not Method.FULL:
        import peft  # noqa: F401
    if train.method is Method.QLORA:
        import bitsandbytes  # noqa: F401
    if train.uses_deepspeed:
        import deepspeed  # noqa: F401


def hf_config(model_config: dict[str, Any], train: TrainSpec):
    from transformers import AutoConfig

    cfg = {k: v for k, v in model_config.items() if k not in ("architectures", "auto_map", "quantization_config")}
    model_type = cfg.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as exc:
        raise PlannerError(f"transformers cannot build model type {model_type!r}: {exc}.") from None
    if train.dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, train.dropout)
    config.use_cache = False
    return config


def _bnb_config(train: TrainSpec, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=train.quant.quant_type.value,
        bnb_4bit_use_double_quant=train.quant.double_quant,
        bnb_4bit_compute_dtype=dtype,
        **({"bnb_4bit_quant_storage": dtype} if train.zero_stage == 3 or train.uses_fsdp2 else {}),
    )


def build_model(
    model_config: dict[str, Any], train: TrainSpec, device: str, *, seed: int, weights: str | None = None
) -> Built:
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    dtype = TORCH_DTYPES[train.precision.compute_dtype]
    if train.uses_fsdp2 and train.method is not Method.QLORA:
        # FSDP2 shards the parameters in their storage dtype (fp32 under its policy); the FSDP-QLoRA recipe loads a
        # 4-bit base in the compute dtype, its packed weights stored in it too (bnb_4bit_quant_storage)
        dtype = TORCH_DTYPES[fsdp2_storage_dtype(train)]
    config = hf_config(model_config, train)
    attn = train.attn_impl.value
    if train.attn_impl is AttnImpl.FLASH_ATTENTION_2 and device != "cuda":
        raise PlannerError("--attn flash_attention_2 needs --device cuda; use sdpa or eager on CPU.")
    notes: list[str] = []
    torch.manual_seed(seed)
    if train.method is Method.QLORA:
        with tempfile.TemporaryDirectory(prefix="planner-qlora-") as tmp:
            src = weights
            if src is None:
                base = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
                # transformers 5's save_pretrained writes only on distributed rank 0
                # (transformers/distributed/mixin.py), and every rank loads its own copy here: write directly.
                from safetensors.torch import save_model

                base.config.to_json_file(f"{tmp}/config.json")
                save_model(base, f"{tmp}/model.safetensors", metadata={"format": "pt"})
                del base
                src = tmp
            model = AutoModelForCausalLM.from_pretrained(
                src,
                config=config,
                quantization_config=_bnb_config(train, dtype),
                dtype=dtype,
                attn_implementation=attn,
                device_map={"": device if device == "cpu" else torch.cuda.current_device()},
            )
    elif weights is not None:
        model = AutoModelForCausalLM.from_pretrained(
            weights, config=config, dtype=dtype, attn_implementation=attn, low_cpu_mem_usage=True
        ).to(device)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    if device == "cpu" and (weights is not None or train.method is Method.QLORA):
        _materialize(model)
    model.config.use_cache = False
    if train.method is Method.QLORA and train.qlora_prep is PeftDtype.FP32:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=train.grad_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif train.grad_checkpointing:
        _enable_checkpointing(model)
    elif train.selective_ac:
        from planner.profile import selective_ac_run

        selective_ac_run.enable(model, train, checkpointed_layers(model))
    hf_model = model
    if train.method in (Method.LORA, Method.QLORA):
        model = _apply_lora(model, train)
    model.train()
    return Built(model=model, hf_model=hf_model, vocab_size=int(config.vocab_size), notes=notes)


def fsdp2_storage_dtype(train: TrainSpec) -> str:
    """The dtype an FSDP2 model is built and sharded in: fp32 under its mixed-precision policy (``bf16-mixed``:
    the sharded fp32 parameters are the master copy, profile/fsdp2.py), else the precision's own."""
    return "fp32" if train.precision is Precision.BF16_MIXED else train.precision.compute_dtype


def _materialize(model: torch.nn.Module) -> None:
    """Copy loaded tensors into allocator memory.

    On CPU, ``from_pretrained`` can leave weights pointing into the memory-mapped safetensors file, which the
    allocator (and so the recorder) never sees; on a GPU they are copied to the device anyway. Quantized
    weights were produced by bitsandbytes and are already allocated.
    """
    with torch.no_grad():
        for module in model.modules():
            for p in list(module.parameters(recurse=False)):
                if not hasattr(p, "quant_state"):
                    p.data = p.data.clone()
            for name, b in list(module.named_buffers(recurse=False)):
                module._buffers[name] = b.clone()


def _enable_checkpointing(model) -> None:
    """Checkpoint every decoder layer, non-reentrant (transformers' default)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _apply_lora(model, train: TrainSpec):
    from peft import LoraConfig, get_peft_model

    lora = train.lora
    targets: Any = "all-linear" if lora.all_linear else list(lora.targets)
    cfg = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=list(lora.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg, autocast_adapter_dtype=train.lora_dtype is PeftDtype.FP32)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(f"peft cannot apply LoRA with targets {list(lora.targets)}: {first}") from None


def checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules whose forward transformers re-runs during backward when checkpointing is on."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - transformers < 4.52
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


# ---------------------------------------------------------------- data


class Batches:
    """Micro-batches of token ids, shape (micro_batch, seq_len): random, or packed from a JSONL file."""

    def __init__(
        self,
        train: TrainSpec,
        vocab_size: int,
        *,
        seed: int,
        rank: int,
        device: str,
        data: str | None = None,
        tokenizer: str | None = None,
    ):
        self.shape = (train.micro_batch, train.seq_len)
        self.vocab_size = vocab_size
        self.device = device
        self.gen = torch.Generator().manual_seed(seed + 1000 * (rank + 1))
        self.rows: torch.Tensor | None = None
        self.next_row = 0
        # --packing: the collator's labels and position ids of the last batch (profile/packing.py); None unpacked
        self.packing = train.packing
        self.packed: dict[str, torch.Tensor] | None = None
        if data is not None:
            self.rows = pack_rows(data, tokenizer, vocab_size, train.seq_len, self.gen)
            self.next_row = (rank * train.micro_batch) % len(self.rows)

    def next(self) -> torch.Tensor:
        if self.rows is None:
            ids = torch.randint(0, self.vocab_size, self.shape, generator=self.gen)
        else:
            n = self.shape[0]
            idx = [(self.next_row + i) % len(self.rows) for i in range(n)]
            self.next_row = (self.next_row + n) % len(self.rows)
            ids = self.rows[idx]
        if self.packing:
            from planner.profile.packing import collate

            batch = {k: v.to(self.device) for k, v in collate(ids, self.gen).items()}
            self.packed = {"labels": batch["labels"], "position_ids": batch["position_ids"]}
            return batch["input_ids"]
        return ids.to(self.device)


def read_jsonl_texts(path: str) -> list[str]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlannerError(f"cannot read --data {path!r}: {getattr(exc, 'strerror', None) or exc}.") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise PlannerError(f"--data {path!r} line {n} is not valid JSON.") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise PlannerError(f"--data {path!r} line {n} has no string field 'text'.")
        texts.append(rec["text"])
    if not texts:
        raise PlannerError(f"--data {path!r} holds no JSON lines with a 'text' field.")
    return texts


def pack_rows(data: str, tokenizer: str | None, vocab_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """Concatenate the file's token streams and cut them into rows of seq_len tokens (at least one row)."""
    texts = read_jsonl_texts(data)
    if tokenizer is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PlannerError(f"cannot load --tokenizer {tokenizer!r}: {str(exc).splitlines()[0]}") from None
        eos = tok.eos_token_id
        stream: list[int] = []
        for text in texts:
            stream.extend(tok(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                stream.append(eos)
        if stream and max(stream) >= vocab_size:
            raise PlannerError(
                f"--tokenizer {tokenizer!r} produces token id {max(stream)}, beyond the model's vocabulary of {vocab_size}."
            )
        ids = torch.tensor(stream, dtype=torch.long)
    else:
        # No tokenizer at hand: random tokens, as many per line as the text would take.
        num = sum(max(1, math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN)) for t in texts)
        ids = torch.randint(0, vocab_size, (num,), generator=gen)
    num_rows = max(1, len(ids) // seq_len)
    if len(ids) < seq_len:  # repeat a short file up to one full row
        ids = ids.repeat(math.ceil(seq_len / max(len(ids), 1)))
    return ids[: num_rows * seq_len].reshape(num_rows, seq_len).clone()
