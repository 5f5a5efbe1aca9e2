"""One validation run's inputs (``Cell``) and the matrix's factor levels: the model's shape and the training
configuration, with the id and hash that name its cached profile and its CSV row (planner/validate/matrix.py
builds the matrix from them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from planner.specs import (
    DEFAULT_LOSS_CHUNKS,
    AttnImpl,
    LoraSpec,
    Loss,
    LossSpec,
    Method,
    Offload,
    Optimizer,
    Parallelism,
    PeftDtype,
    Precision,
    QuantSpec,
    Reference,
    Task,
    TaskSpec,
    TrainSpec,
    ZeroConfig,
)
from planner.specs.fsdp import FsdpConfig
from planner.specs.grpo import GrpoSpec

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
                     "zero_config": "", "grad_accum": 1, "activation_offload": False, "optimizer_in_backward": False,
                     "fsdp": "", "task": "sft", "reference": "auto", "compile": False,
                     "packing": False, "grpo": "", "selective_ac": "", "offload": "", "engine": ""}
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
    optimizer_in_backward: bool = False
    # FSDP2 (zero 0): its FsdpConfig.to_dict() JSON; "" is not FSDP2
    fsdp: str = ""
    task: str = "sft"  # --task (sft, or TRL's DPOTrainer: specs/task.py)
    reference: str = "auto"  # --reference
    compile: bool = False  # --compile: the model under torch.compile (inductor)
    packing: bool = False  # --packing: the rows flattened by DataCollatorWithFlattening
    # --task grpo: its GrpoSpec.to_dict() JSON (num_generations, completion_len, beta, ...); "" otherwise
    grpo: str = ""
    selective_ac: str = ""  # --selective-ac: torchtitan's selective checkpointing policy ("op" or "N")
    offload: str = ""  # --offload under DeepSpeed ZeRO (an Offload value); "": nothing offloaded
    engine: str = ""  # "deepspeed" at zero 0: DeepSpeed's own engine (--engine deepspeed --zero 0); "": the stage decides

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
        prec = {"fp32": "fp32", "bf16": "bf16", "bf16-autocast": "bf16ac", "fp16-autocast": "fp16ac",
                "bf16-base-autocast": "bf16bac"}.get(
            self.precision, "bf16m")
        opt = "" if self.optimizer == DEFAULT_OPTIMIZER else f"-{self.optimizer}"
        opt += "" if self.lora_dtype == DEFAULT_PEFT_DTYPE else f"-lora{self.lora_dtype}"
        opt += "" if self.qlora_prep == DEFAULT_PEFT_DTYPE else f"-prep{self.qlora_prep}"
        opt += ("-dscfg" if self.zero_config else "") + (f"-ga{self.grad_accum}" if self.grad_accum != 1 else "")
        opt += "-actoffload" if self.activation_offload else ""
        opt += "-optinbwd" if self.optimizer_in_backward else ""
        opt += _fsdp_tag(self.fsdp)
        opt += "-compile" if self.compile else ""
        opt += "-packed" if self.packing else ""
        opt += f"-sac{self.selective_ac}" if self.selective_ac else ""
        opt += f"-off{self.offload.replace('optimizer', 'opt').replace('+', '')}" if self.offload else ""
        opt += "-ds" if self.engine else ""
        loss = "" if self.loss == DEFAULT_LOSS else f"-{self.loss}{self.loss_chunks}"
        loss += "" if self.task in ("sft", "grpo") else f"-{self.task}-ref{self.reference}"
        loss += _grpo_tag(self.grpo)
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
                         quant=quant, parallelism=self._parallelism(), micro_batch=self.micro_batch, seq_len=self.seq_len,
                         grad_accum=self.grad_accum, grad_checkpointing=self.ckpt, attn_impl=AttnImpl(self.attn),
                         activation_offload=self.activation_offload, optimizer_in_backward=self.optimizer_in_backward,
                         compile=self.compile, packing=self.packing, loss=LossSpec(Loss(self.loss), self.loss_chunks),
                         task=TaskSpec(Task(self.task), Reference(self.reference),
                                       GrpoSpec.from_dict(json.loads(self.grpo)) if self.grpo else None),
                         selective_ac=self.selective_ac)  # fmt: skip

    def _parallelism(self) -> Parallelism:
        if self.fsdp:
            return Parallelism.fsdp2(FsdpConfig.from_dict(json.loads(self.fsdp)))
        offload = Offload(self.offload) if self.offload else Offload.NONE
        return Parallelism.from_zero(self.zero, offload, zero_config=self._zero_config(),
                                     deepspeed_stage0=self.engine == "deepspeed")

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


def _fsdp_tag(fsdp: str) -> str:
    """``-fsdp2`` plus what differs from FSDP2's defaults (no reshard, offload, reduce in the gradients' dtype)."""
    if not fsdp:
        return ""
    cfg = FsdpConfig.from_dict(json.loads(fsdp))
    return ("-fsdp2" + ("" if cfg.reshard_after_forward else "-noreshard") + ("-offload" if cfg.cpu_offload else "")
            + ("" if cfg.reduce_dtype == "fp32" else "-reduceparam")
            + (f"-hsdp{cfg.replicate_degree}" if cfg.replicate_degree > 1 else ""))


def _grpo_tag(grpo: str) -> str:
    """``-grpo-g{generations}c{completion}b{beta}`` of a --task grpo cell ("" otherwise)."""
    if not grpo:
        return ""
    d = json.loads(grpo)
    return f"-grpo-g{d['num_generations']}c{d['completion_len']}b{d['beta']:g}"
