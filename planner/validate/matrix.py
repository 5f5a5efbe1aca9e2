"""The validation matrix: seeded, reproducible cells of tiny models, each one real profile plus its estimate.

A ``Cell`` is every input of one run: the model's shape (family, hidden size, layers, heads, vocabulary,
...) and the training configuration (method, precision, ZeRO stage and ranks, checkpointing, attention,
sequence length, micro-batch). Issue 5 asks for these factors and levels:

- families: Llama style with grouped-query attention, GPT-2 style with dropout (its config's 0.1 residual,
  embedding and attention dropout), Qwen2 style with QKV bias (tied embeddings, as the small Qwen2.5 models),
  and a small Mixtral-style mixture of experts (4 experts, top 2);
- methods: full, LoRA on the attention projections, LoRA on all linear layers, QLoRA nf4 with and without
  double quantization;
- ZeRO 0 on one rank; ZeRO 1, 2 and 3 on two ranks (DeepSpeed, gloo); QLoRA is not combined with stage 3
  (planner refuses it: bitsandbytes 4-bit weights are not sharded);
- checkpointing on/off, eager and SDPA attention, three sequence lengths, three micro-batches, three hidden
  sizes, two depths and four vocabularies.

``full_matrix`` crosses family x method x checkpointing on one rank (40 cells) and adds every ZeRO stage x
method on two ranks (13 cells); the remaining factors are drawn from balanced, seeded shuffles so each level
appears about equally often and no single shape dominates; ``EXTRA_CELLS`` (a tiny Qwen3-MoE with LoRA on all
linear layers, a random cell the model once missed, and three cells with torch's fused AdamW; every other cell
runs foreach AdamW) come after them without moving them. ``ci_matrix`` is the cheapest subset of it that
still covers every level of every factor, every family x method pair and checkpointing on and off for
every family and every method (a weighted greedy set cover: a
2-rank DeepSpeed cell costs about ten single-rank cells). ``random_cells`` draws shapes the matrix was not
written for.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from planner.specs import (
    DEFAULT_LOSS_CHUNKS,
    AttnImpl,
    LoraSpec,
    Loss,
    LossSpec,
    Method,
    Optimizer,
    Parallelism,
    PeftDtype,
    Precision,
    QuantSpec,
    TrainSpec,
    ZeroConfig,
)

DEFAULT_SEED = 20240605
FAMILIES = ("llama", "gpt2", "qwen2", "mixtral")
METHODS = ("full", "lora-attn", "lora-all", "qlora-dq", "qlora-nodq")
ZERO_SETUPS = ((0, 1), (1, 2), (2, 2), (3, 2))  # (stage, ranks)
ATTNS = ("eager", "sdpa")
SEQ_LENS = (32, 64, 128)
MICRO_BATCHES = (1, 2, 4)
HIDDENS = (64, 96, 128)
LAYERS = (2, 3)
VOCABS = (512, 1000, 2048, 3072)
PRECISIONS = ("fp32", "bf16-mixed")
DEFAULT_OPTIMIZER = Optimizer.ADAMW.value  # torch AdamW, foreach: every designed cell
DEFAULT_PEFT_DTYPE = PeftDtype.FP32.value  # peft's fp32 adapters and prepare_model_for_kbit_training's upcast
DEFAULT_LOSS = Loss.STANDARD.value  # transformers' ForCausalLMLoss: every designed cell
# Cell fields added after the seeded design: at these values they are left out of the id and hash, so earlier
# cells keep their ids and cached profiles (the loss and its chunks leave together, with the standard loss).
DEFAULTS_LEFT_OUT = {"optimizer": DEFAULT_OPTIMIZER, "lora_dtype": DEFAULT_PEFT_DTYPE, "qlora_prep": DEFAULT_PEFT_DTYPE,
                     "zero_config": "", "grad_accum": 1, "activation_offload": False}
# and a CSV row without one of these columns reads as the default
LATE_FIELDS = (*DEFAULTS_LEFT_OUT, "loss", "loss_chunks")
HEAD_DIM = 16
LORA_RANK = 8
LORA_DROPOUT = 0.05  # planner's default
NUM_EXPERTS, EXPERTS_PER_TOKEN = 4, 2
STEPS = 3  # the profile's steady-state peak is taken after step 0
# Factors whose every level the CI matrix must cover.
COVERED = ("family", "method", "zero", "ckpt", "attn", "seq_len", "micro_batch", "hidden", "layers", "vocab",
           "precision")  # fmt: skip
# Relative cost of a cell for the CI subset: two processes, torchrun and a deepspeed import.
MULTI_RANK_COST = 10
# Attention projections per family (LoRA "attention" target set).
ATTN_TARGETS = {"llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"),
                "gpt2": ("c_attn",), "qwen3_moe": ("q_proj", "v_proj")}  # fmt: skip
MOE_FAMILIES = ("mixtral", "qwen3_moe")


@dataclass(frozen=True)
class Cell:
    """Every input of one validation run."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    method: str
    precision: str
    zero: int
    num_ranks: int
    ckpt: bool
    attn: str
    seq_len: int
    micro_batch: int
    lora_rank: int = LORA_RANK
    num_experts: int = 0
    lora_dropout: float = LORA_DROPOUT
    optimizer: str = DEFAULT_OPTIMIZER
    # DeepSpeed's buckets and thresholds as ZeroConfig.to_dict() JSON ("": "auto", what the bundle writes)
    zero_config: str = ""
    grad_accum: int = 1  # micro-batches per optimizer step
    lora_dtype: str = DEFAULT_PEFT_DTYPE  # --lora-dtype
    qlora_prep: str = DEFAULT_PEFT_DTYPE  # --qlora-prep
    activation_offload: bool = False
    loss: str = DEFAULT_LOSS
    loss_chunks: int = DEFAULT_LOSS_CHUNKS

    @property
    def id(self) -> str:
        """Readable and unique: the main factors, then a hash of every input. The fields of DEFAULTS_LEFT_OUT at
        their defaults are named neither in the id nor in the hash, so the cells from before the fields keep their ids
        and profiles."""
        inputs = asdict(self)
        for name, default in DEFAULTS_LEFT_OUT.items():
            if inputs[name] == default:
                del inputs[name]
        if self.loss == DEFAULT_LOSS:
            del inputs["loss"], inputs["loss_chunks"]
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:6]
        prec = {"fp32": "fp32", "bf16": "bf16"}.get(self.precision, "bf16m")
        opt = "" if self.optimizer == DEFAULT_OPTIMIZER else f"-{self.optimizer}"
        opt += "" if self.lora_dtype == DEFAULT_PEFT_DTYPE else f"-lora{self.lora_dtype}"
        opt += "" if self.qlora_prep == DEFAULT_PEFT_DTYPE else f"-prep{self.qlora_prep}"
        opt += ("-dscfg" if self.zero_config else "") + (f"-ga{self.grad_accum}" if self.grad_accum != 1 else "")
        opt += "-actoffload" if self.activation_offload else ""
        loss = "" if self.loss == DEFAULT_LOSS else f"-{self.loss}{self.loss_chunks}"
        return (f"{self.family}-h{self.hidden}l{self.layers}v{self.vocab}-{self.method}-z{self.zero}g{self.num_ranks}"
                f"-{'ckpt' if self.ckpt else 'nock'}-{self.attn}-s{self.seq_len}b{self.micro_batch}-{prec}{opt}{loss}"
                f"-{digest}")  # fmt: skip

    @property
    def cost(self) -> int:
        return MULTI_RANK_COST if self.num_ranks > 1 else 1

    def model_config(self) -> dict[str, Any]:
        """A transformers config dict (random weights are built from it)."""
        positions = max(128, self.seq_len)
        if self.family == "gpt2":
            return {"model_type": "gpt2", "n_embd": self.hidden, "n_layer": self.layers, "n_head": self.heads,
                    "n_inner": self.intermediate, "vocab_size": self.vocab, "n_positions": positions}  # fmt: skip
        cfg: dict[str, Any] = {
            "model_type": self.family,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": positions,
        }
        if self.family == "qwen2":
            cfg["tie_word_embeddings"] = True
        if self.family == "mixtral":
            cfg.update(num_local_experts=self.num_experts, num_experts_per_tok=EXPERTS_PER_TOKEN)
        if self.family == "qwen3_moe":  # every layer sparse; the experts' width is moe_intermediate_size
            cfg.update(head_dim=self.hidden // self.heads, num_experts=self.num_experts,
                       num_experts_per_tok=EXPERTS_PER_TOKEN, moe_intermediate_size=self.intermediate,
                       tie_word_embeddings=False)
        return cfg

    def model_spec(self):
        from planner.models import spec_from_config

        return spec_from_config(self.model_config(), f"validate-{self.family}-h{self.hidden}", "validation")

    def train_spec(self) -> TrainSpec:
        targets = ATTN_TARGETS[self.family] if self.method == "lora-attn" else ("all-linear",)
        quant = QuantSpec(double_quant=self.method == "qlora-dq") if self.method.startswith("qlora") else QuantSpec()
        return TrainSpec(method=Method(self.method.split("-")[0]), precision=Precision(self.precision),
                         optimizer=Optimizer(self.optimizer), lora_dtype=PeftDtype(self.lora_dtype),
                         qlora_prep=PeftDtype(self.qlora_prep),
                         lora=LoraSpec(rank=self.lora_rank, alpha=2 * self.lora_rank, dropout=self.lora_dropout,
                                       targets=targets),
                         quant=quant, parallelism=Parallelism.from_zero(self.zero, zero_config=self._zero_config()), micro_batch=self.micro_batch, seq_len=self.seq_len,
                         grad_accum=self.grad_accum, grad_checkpointing=self.ckpt, attn_impl=AttnImpl(self.attn),
                         activation_offload=self.activation_offload,
                         loss=LossSpec(Loss(self.loss), self.loss_chunks))  # fmt: skip

    def _zero_config(self) -> ZeroConfig | None:
        return ZeroConfig.from_dict(json.loads(self.zero_config)) if self.zero_config else None

    def inputs(self) -> dict[str, Any]:
        """Every input as a flat dict (the CSV's input columns)."""
        d = asdict(self)
        d["lora_targets"] = "" if self.method == "full" else ",".join(self.train_spec().lora.targets)
        d["double_quant"] = self.method == "qlora-dq" if self.method.startswith("qlora") else ""
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Cell:
        """A cell from its dict or a CSV row (a row from before the optimizer or loss columns: the defaults)."""
        kinds = {f.name: f.type for f in fields(Cell)}
        out: dict[str, Any] = {}
        for name, kind in kinds.items():
            if name in LATE_FIELDS and not d.get(name):
                continue
            value = d[name]
            if kind == "bool":
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true")
            elif kind == "int":
                value = int(value)
            elif kind == "float":
                value = float(value)
            out[name] = value
        return Cell(**out)


# ---------------------------------------------------------------- shapes


def _shape(family: str, hidden: int, layers: int, vocab: int, rng: random.Random) -> dict[str, Any]:
    heads = hidden // HEAD_DIM
    kv = heads if family == "gpt2" else 2  # grouped-query attention: 4, 6 or 8 query heads share 2 K/V heads
    if family == "gpt2":
        inter = 4 * hidden
    elif family == "mixtral":
        inter = rng.choice((hidden, 2 * hidden))  # per expert
    else:
        inter = rng.choice((2 * hidden, 3 * hidden, 8 * hidden // 3 // 8 * 8))
    return {"family": family, "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv,
            "intermediate": inter, "vocab": vocab, "num_experts": NUM_EXPERTS if family == "mixtral" else 0}  # fmt: skip


def _lora_dropout(family: str, method: str) -> float:
    """peft puts LoRA on fused 3-D expert weights with ``lora.ParamWrapper``, which refuses a LoRA dropout
    (peft/tuners/lora/layer.py): a mixture of experts with all-linear targets trains without one."""
    return 0.0 if family in MOE_FAMILIES and method != "lora-attn" and method != "full" else LORA_DROPOUT


# Cells outside the seeded design (appended to it, and always in the CI subset), so that the designed cells keep
# their ids and cached profiles: a tiny Qwen3-MoE (experts registered before the router, unlike Mixtral) with
# LoRA on all linear layers, which peft puts on the fused expert tensors and the router with lora.ParamWrapper
# (LoRA dropout 0, the only value it accepts; issue 14 item 8); and the random cell of seed 2118205620, a
# full fp32 GPT-2 whose vocabulary outweighs its layers, so the step peaks at the very end of backward, where
# autograd sums the tied embedding's two gradients out of place (tape._param_grad_arrives).
EXTRA_CELLS = (
    Cell(family="qwen3_moe", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=64, vocab=512,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2, num_experts=NUM_EXPERTS, lora_dropout=_lora_dropout("qwen3_moe", "lora-all")),
    Cell(family="gpt2", hidden=48, layers=4, heads=6, kv_heads=6, intermediate=192, vocab=3957, method="full",
         precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=32, micro_batch=1, lora_rank=4),
)
# torch's fused AdamW (``--optimizer adamw-fused``, issue 16 item 2), appended after EXTRA_CELLS the same way: full
# bf16-mixed fine-tuning without DeepSpeed, short enough that the optimizer step is the peak (where foreach's
# copy of the second moment would be 4 bytes per parameter more: +20% of this cell's peak); LoRA on the attention
# projections (fp32 adapters: one fused step counter per adapter tensor); full bf16-mixed ZeRO-2 on two ranks,
# peaking at the step too (DeepSpeed steps the rank's flat fp32 partition with the fused kernel).
OPTIMIZER_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, optimizer="adamw-fused"),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="lora-attn", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=64,
         micro_batch=2, optimizer="adamw-fused"),
    Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="full", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, optimizer="adamw-fused"),
)
EXTRA_CELLS = EXTRA_CELLS + OPTIMIZER_CELLS
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


# Cells of the full matrix only (each tuple's comment says why); the CI subset never picks them.
FULL_ONLY_CELLS = (DTYPE_CELLS + RECIPE_OPTIMIZER_CELLS + OFFLOAD_CELLS + LOSS_CELLS + DEEPSPEED_CONFIG_CELLS
                   + ACCUMULATION_CELLS)


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


def _balanced(levels: tuple, n: int, rng: random.Random) -> list:
    """n values cycling through the levels (each appears n/len or n/len + 1 times), shuffled."""
    values = [levels[i % len(levels)] for i in range(n)]
    rng.shuffle(values)
    return values


def _fill(skeletons: list[dict[str, Any]], rng: random.Random) -> list[Cell]:
    n = len(skeletons)
    draws = {
        "attn": _balanced(ATTNS, n, rng),
        "seq_len": _balanced(SEQ_LENS, n, rng),
        "micro_batch": _balanced(MICRO_BATCHES, n, rng),
        "hidden": _balanced(HIDDENS, n, rng),
        "layers": _balanced(LAYERS, n, rng),
        "vocab": _balanced(VOCABS, n, rng),
        "precision": _balanced(PRECISIONS, n, rng),
    }
    cells = []
    for i, sk in enumerate(skeletons):
        shape = _shape(sk["family"], draws["hidden"][i], draws["layers"][i], draws["vocab"][i], rng)
        # QLoRA computes in a 16-bit dtype (planner refuses fp32 QLoRA).
        precision = "bf16-mixed" if sk["method"].startswith("qlora") else draws["precision"][i]
        cells.append(Cell(**shape, method=sk["method"], precision=precision, zero=sk["zero"],
                          num_ranks=sk["num_ranks"], ckpt=sk["ckpt"], attn=draws["attn"][i],
                          seq_len=draws["seq_len"][i], micro_batch=draws["micro_batch"][i],
                          lora_dropout=_lora_dropout(sk["family"], sk["method"])))  # fmt: skip
    return cells


def full_matrix(seed: int = DEFAULT_SEED) -> list[Cell]:
    """The full matrix: family x method x checkpointing on one rank, ZeRO 1/2/3 x method on two ranks, EXTRA_CELLS,
    and FULL_ONLY_CELLS."""
    rng = random.Random(seed)
    single = [{"family": f, "method": m, "ckpt": c, "zero": 0, "num_ranks": 1}
              for f in FAMILIES for m in METHODS for c in (False, True)]  # fmt: skip
    multi_keys = [(z, n, m) for z, n in ZERO_SETUPS if z > 0 for m in METHODS if not (z == 3 and m.startswith("qlora"))]
    fams = _balanced(FAMILIES, len(multi_keys), rng)
    ckpts = _balanced((False, True), len(multi_keys), rng)
    multi = [{"family": f, "method": m, "ckpt": c, "zero": z, "num_ranks": n}
             for (z, n, m), f, c in zip(multi_keys, fams, ckpts, strict=True)]  # fmt: skip
    return _fill(single, rng) + _fill(multi, rng) + list(EXTRA_CELLS) + list(FULL_ONLY_CELLS)


def _requirements(cells: list[Cell]) -> set[tuple]:
    req: set[tuple] = set()
    for c in cells:
        req |= _covers(c)
    return req


def _covers(c: Cell) -> set[tuple]:
    out = {(k, getattr(c, k)) for k in COVERED}
    out.add(("family x method", c.family, c.method))
    out.add(("method x checkpointing", c.method, c.ckpt))
    out.add(("family x checkpointing", c.family, c.ckpt))
    if c.num_ranks > 1:  # every method and every stage run at least once under DeepSpeed
        out.add(("multi-rank method", c.method))
    return out


def ci_matrix(seed: int = DEFAULT_SEED) -> list[Cell]:
    """The cheapest subset of the full matrix covering every factor level and family x method pair."""
    everything = full_matrix(seed)
    cells = [c for c in everything if c not in EXTRA_CELLS and c not in FULL_ONLY_CELLS]
    todo = _requirements(cells)
    chosen: list[Cell] = list(EXTRA_CELLS)
    while todo:
        best = max(cells, key=lambda c: (len(_covers(c) & todo) / c.cost, -cells.index(c)))
        if not _covers(best) & todo:
            break
        chosen.append(best)
        todo -= _covers(best)
    order = {c: i for i, c in enumerate(everything)}
    return sorted(chosen, key=order.__getitem__)


# ---------------------------------------------------------------- random shapes


def random_cells(seed: int, n: int, *, max_ranks: int = 2) -> list[Cell]:
    """n cells with shapes the matrix was not written for (hidden, layers, heads, vocabulary, sequence).

    Heads are 2-8 of an even head dimension 8-32; grouped-query families take a divisor of the heads as K/V
    heads; vocabularies are any size 256-4096, sequences 16-160 tokens. Mixture-of-experts sizes are multiples
    of 8, as transformers' grouped_mm experts need (16-byte strides in bf16). Method, precision, checkpointing,
    attention and micro-batch are random too; ZeRO stages 1-3 (two ranks) come up in a quarter of the cells
    when ``max_ranks`` allows, the rest run on one rank.
    """
    rng = random.Random(seed)
    cells = []
    for _ in range(n):
        family = rng.choice(FAMILIES)
        heads = rng.randint(2, 8)
        head_dim = rng.choice((8, 12, 16, 24, 32))
        if family == "mixtral":  # grouped_mm's 16-byte strides (above) apply to the hidden size too
            head_dim = rng.choice((8, 16, 24, 32))
        hidden = heads * head_dim
        kv = heads if family == "gpt2" else rng.choice([k for k in range(1, heads + 1) if heads % k == 0])
        if family == "gpt2":
            inter = 4 * hidden
        elif family == "mixtral":
            # transformers' MoE experts run torch grouped_mm, which needs 16-byte row strides
            # (transformers/integrations/moe.py): expert sizes are multiples of 8 (bf16).
            inter = 8 * rng.randint(max(1, hidden // 16), hidden // 4)
        else:
            inter = rng.randint(2 * hidden, 4 * hidden)
        method = rng.choice(METHODS)
        zero, ranks = (0, 1)
        if max_ranks > 1 and rng.random() < 0.25:
            zero, ranks = rng.choice([(z, r) for z, r in ZERO_SETUPS if z > 0 and not (z == 3 and "qlora" in method)])
        precision = "bf16-mixed" if method.startswith("qlora") else rng.choice(PRECISIONS)
        cells.append(Cell(family=family, hidden=hidden, layers=rng.randint(1, 4), heads=heads, kv_heads=kv,
                          intermediate=inter, vocab=rng.randint(256, 4096), method=method, precision=precision,
                          zero=zero, num_ranks=ranks, ckpt=rng.random() < 0.5, attn=rng.choice(ATTNS),
                          seq_len=rng.randint(16, 160), micro_batch=rng.randint(1, 4),
                          lora_rank=rng.choice((2, 4, 8, 16)),
                          num_experts=rng.randint(2, 6) if family == "mixtral" else 0,
                          lora_dropout=_lora_dropout(family, method)))  # fmt: skip
    return cells
