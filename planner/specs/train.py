"""How it is trained: TrainSpec (with its LoRA, 4-bit and parallelism parts), validated as a whole, and its
JSON form (the `train` block)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from planner.errors import PlannerError
from planner.specs.enums import AttnImpl, Method, Offload, Optimizer, PeftDtype, Precision, QuantType
from planner.specs.fsdp import FsdpConfig
from planner.specs.loss import Loss, LossSpec
from planner.specs.packing import check_packing
from planner.specs.parallelism import Engine, Parallelism, ZeroConfig
from planner.specs.ppo import check_train as _check_ppo
from planner.specs.selective_ac import check_selective_ac
from planner.specs.task import Reference, Task, TaskSpec


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (Hu et al. 2021). ``targets`` is ``("all-linear",)`` or module leaf names."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("all-linear",)
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise PlannerError(f"LoRA rank must be at least 1, got {self.rank}.")
        if self.alpha <= 0:
            raise PlannerError(f"--lora-alpha must be positive (the adapter scale is alpha / rank), got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise PlannerError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise PlannerError("LoRA targets must name at least one module, or be 'all-linear'.")

    @property
    def all_linear(self) -> bool:
        return "all-linear" in self.targets


@dataclass(frozen=True)
class QuantSpec:
    """bitsandbytes 4-bit quantization of the frozen base (QLoRA, Dettmers et al. 2023)."""

    quant_type: QuantType = QuantType.NF4
    double_quant: bool = True
    blocksize: int = 64


@dataclass(frozen=True)
class TrainSpec:
    method: Method = Method.FULL
    precision: Precision = Precision.BF16_MIXED
    optimizer: Optimizer = Optimizer.ADAMW
    lora: LoraSpec = field(default_factory=LoraSpec)
    quant: QuantSpec = field(default_factory=QuantSpec)
    parallelism: Parallelism = field(default_factory=Parallelism)
    micro_batch: int = 1
    seq_len: int = 2048
    grad_accum: int = 1
    grad_checkpointing: bool = False
    attn_impl: AttnImpl = AttnImpl.SDPA
    # None: use the model config's own dropout probabilities.
    dropout: float | None = None
    # LoRA adapters in fp32 (peft's autocast_adapter_dtype) or the compute dtype; QLoRA's unquantized parameters
    # in fp32 (peft's prepare_model_for_kbit_training) or the compute dtype (estimate/peft_dtypes.py).
    lora_dtype: PeftDtype = PeftDtype.FP32
    qlora_prep: PeftDtype = PeftDtype.FP32
    # Saved activations copied to host RAM in forward and back in backward (torch.autograd.graph.save_on_cpu)
    activation_offload: bool = False
    loss: LossSpec = field(default_factory=LossSpec)
    # Each parameter stepped by its own optimizer in a post-accumulate-grad hook during backward, its gradient
    # then freed (torchtune's optimizer_in_bwd; estimate/step/tape.py)
    optimizer_in_backward: bool = False
    # sft, or TRL's DPOTrainer with its reference (specs/task.py)
    task: TaskSpec = field(default_factory=TaskSpec)
    # The model wrapped in torch.compile (inductor), as the HF Trainer's torch_compile=True does through accelerate
    # (Accelerator.prepare_model: torch.compile(model, backend="inductor"); DeepSpeed: engine.compile). The estimate
    # keeps eager's activations, an upper bound without checkpointing and not with it (estimate/compile_note.py).
    compile: bool = False
    # Sequence packing, padding-free: the micro-batch's rows as one row with position ids reset per document
    # (transformers DataCollatorWithFlattening, TRL packing=True; specs/packing.py, estimate/step/packed.py)
    packing: bool = False
    # Selective activation checkpointing, torchtitan's selective_ac_option: "" (off), "op" or "N" (specs/selective_ac.py)
    selective_ac: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.loss, LossSpec):
            raise PlannerError(f"loss must be a LossSpec, got {self.loss!r}.")
        if not isinstance(self.task, TaskSpec):
            raise PlannerError(f"task must be a TaskSpec, got {self.task!r}.")
        self._check_task()
        if not isinstance(self.parallelism, Parallelism):
            raise PlannerError(f"parallelism must be a Parallelism spec, got {self.parallelism!r}.")
        check_selective_ac(self.selective_ac, self.grad_checkpointing, self.parallelism.uses_fsdp2)
        if self.micro_batch < 1:
            raise PlannerError(f"micro-batch must be at least 1, got {self.micro_batch}.")
        if self.seq_len < 1:
            raise PlannerError(f"sequence length must be at least 1, got {self.seq_len}.")
        if self.grad_accum < 1:
            raise PlannerError(f"gradient accumulation must be at least 1, got {self.grad_accum}.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise PlannerError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.method is Method.QLORA and self.zero_stage == 3 and self.offload is Offload.OPTIMIZER_PARAMS:
            raise PlannerError("QLoRA with ZeRO-3 parameter offload is not modelled (the 4-bit weights' quant_state "
                               "stays on the device); use --offload none or optimizer.")
        if self.method is Method.QLORA and self.precision is Precision.FP32:
            raise PlannerError("QLoRA needs a 16-bit compute dtype; use --precision bf16-mixed or fp16-mixed.")
        if self.method is not Method.FULL and self.lora_dtype is PeftDtype.BIT16:
            if self.precision is Precision.FP32:
                raise PlannerError("--lora-dtype 16bit keeps the adapters in the model's 16-bit dtype, and --precision "
                                   "fp32 has none; use --lora-dtype fp32 or a 16-bit --precision.")
            if self.precision is Precision.FP16_MIXED and not self.parallelism.uses_deepspeed:
                raise PlannerError("--lora-dtype 16bit with --precision fp16-mixed trains fp16 adapters, whose "
                                   "gradients torch's GradScaler refuses to unscale (the HF Trainer's fp16 path); "
                                   "use bf16-mixed or --lora-dtype fp32.")
        if self.precision.autocast_dtype:
            _check_autocast(self)
        if self.optimizer_in_backward:
            _check_optimizer_in_backward(self)
        if self.packing:
            check_packing(sft=self.task.is_default, activation_offload=self.activation_offload)
        # DeepSpeed wraps a client optimizer and hands it its flat 1-D fp32 partitions: bitsandbytes' block layout
        # and Adafactor's factored moment (>= 2-D only) would follow those, which planner has not profiled
        # (planner/estimate/optim_rules.py models each on the model's own tensors).
        if self.activation_offload and self.method is Method.QLORA:
            raise PlannerError(
                "--activation-offload is not modelled with QLoRA: which tensors bitsandbytes' 4-bit matmul saves "
                "through autograd (and so copies to the host) is not written down yet; use full or LoRA."
            )
        if self.optimizer in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW) and (
            self.parallelism.uses_deepspeed
        ):
            raise PlannerError(
                f"optimizer {self.optimizer.value!r} is a bitsandbytes optimizer and cannot be combined with "
                f"DeepSpeed ZeRO stage {self.zero_stage}; use adamw or adamw-fused."
            )
        if self.parallelism.uses_fsdp2:
            _check_fsdp2(self)
        if self.parallelism.uses_deepspeed and self.zero_stage == 0:
            _check_deepspeed_stage0(self)
        if self.optimizer is Optimizer.ADAFACTOR and self.parallelism.uses_deepspeed:
            raise PlannerError(
                f"optimizer 'adafactor' with DeepSpeed ZeRO stage {self.zero_stage} is not modelled (DeepSpeed steps "
                "flat 1-D partitions, so its second moment would not be factored); use adamw or adamw-fused."
            )

    def _check_task(self) -> None:
        """What --task dpo and grpo are modelled with (estimate/posttrain.py); the rest is refused in one sentence."""
        if self.task.kind is Task.SFT:
            return
        k = self.task.kind.value
        if self.task.reference is Reference.ADAPTER and self.method is Method.FULL:
            raise PlannerError("--reference adapter disables the policy's LoRA adapter for the reference pass; "
                               "full fine-tuning has none: use --reference copy or precomputed.")
        if self.parallelism.uses_deepspeed:
            _check_dpo_deepspeed(self)
        if self.parallelism.uses_fsdp2:
            raise PlannerError(f"--task {k} with FSDP2 is not modelled yet (the reference forward and TRL's fused LM "
                               "head between fully_shard's gathers); use --zero 0.")
        if self.precision.autocast_dtype:
            raise PlannerError(f"--task {k} with --precision {self.precision.value} is not modelled yet (TRL's fused "
                               "LM head under autocast); use bf16, bf16-mixed or fp32.")
        if self.optimizer_in_backward:
            raise PlannerError(f"--task {k} with --optimizer-in-backward is not modelled: TRL's trainers step "
                               "its optimizer after backward.")
        if self.loss.kind is not Loss.STANDARD:
            raise PlannerError(f"--task {k} computes its log-probabilities with TRL's fused LM head "
                               "(add_fused_lm_head); --loss does not apply: leave it at standard.")
        if self.activation_offload:
            raise PlannerError(f"--activation-offload with --task {k} is not modelled: the reference forward and "
                               "TRL's fused LM head under save_on_cpu are not written down yet.")
        if self.task.kind is Task.PPO:
            _check_ppo(self)
        if self.task.kind is Task.GRPO and self.grpo_completion_len >= self.seq_len:
            raise PlannerError(f"--seq-len {self.seq_len} is the prompt plus the completion: it must exceed "
                               f"--completion-len {self.grpo_completion_len}.")

    def with_seq_len(self, seq_len: int) -> TrainSpec:
        """This run at another sequence length (the fit search): --task grpo keeps its completion, capped to leave
        the prompt one token."""
        ppo = self.task.ppo
        if ppo is not None and ppo.response_len >= seq_len:
            task = replace(self.task, ppo=replace(ppo, response_len=max(1, seq_len - 1)))
            return replace(self, seq_len=seq_len, task=task)
        grpo = self.task.grpo
        if grpo is None or grpo.completion_len < seq_len:
            return replace(self, seq_len=seq_len)
        task = replace(self.task, grpo=replace(grpo, completion_len=max(1, seq_len - 1)))
        return replace(self, seq_len=seq_len, task=task)

    @property
    def grpo_completion_len(self) -> int:
        """--task grpo: the completion's tokens of each --seq-len row (0 otherwise)."""
        return self.task.grpo.completion_len if self.task.grpo is not None else 0

    @property
    def zero_stage(self) -> int:
        """DeepSpeed's ZeRO stage (0 without DeepSpeed): how far states are sharded."""
        return self.parallelism.zero_stage

    @property
    def offload(self) -> Offload:
        return self.parallelism.offload

    @property
    def uses_deepspeed(self) -> bool:
        return self.parallelism.uses_deepspeed

    @property
    def uses_fsdp2(self) -> bool:
        return self.parallelism.uses_fsdp2

    @property
    def num_tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len


def _check_autocast(train: TrainSpec) -> None:
    """What the autocast recipe (fp32 weights, forward under torch.autocast: estimate/step/autocast.py) is
    modelled and profiled for: full fine-tuning on one process or DDP, standard loss, SDPA."""
    name = train.precision.value
    if train.precision is Precision.BF16_BASE_AUTOCAST and train.method is not Method.LORA:
        raise PlannerError(f"--precision {name} is modelled for LoRA (a frozen bf16 base, peft's fp32 adapters); "
                           "use bf16-autocast (fp32 weights) or bf16 for full fine-tuning, bf16-mixed for QLoRA.")
    if train.uses_deepspeed:
        raise PlannerError(f"--precision {name} is the HF Trainer's recipe without DeepSpeed (DeepSpeed keeps "
                           "16-bit weights with fp32 masters and does not autocast); use bf16-mixed with --zero.")
    if train.uses_fsdp2:
        raise PlannerError(f"--precision {name} with FSDP2 is not modelled: FSDP2 casts through its "
                           "MixedPrecisionPolicy (--precision bf16-mixed), not autocast.")
    if train.method is Method.QLORA:
        raise PlannerError(f"--precision {name} is not modelled with QLoRA (bitsandbytes' 4-bit matmul under "
                           "autocast); use bf16-mixed (fp32 adapters) or bf16.")
    if train.method is Method.LORA and train.lora_dtype is PeftDtype.BIT16:
        raise PlannerError(f"--precision {name} keeps fp32 weights and peft's fp32 adapters; --lora-dtype 16bit "
                           "is not modelled with it: use --lora-dtype fp32, or bf16-mixed.")
    unmodelled = [flag for flag, on in (("--activation-offload", train.activation_offload),
                                        (f"--loss {train.loss.kind.value}", train.loss.kind.value != "standard"),
                                        (f"--attn-impl {train.attn_impl.value}", train.attn_impl is AttnImpl.EAGER))
                  if on]
    if unmodelled:
        raise PlannerError(f"--precision {name} is not modelled with {' or '.join(unmodelled)} yet (autocast's "
                           "casts in those paths are not written down); use bf16-mixed or fp32 for it.")


def _check_optimizer_in_backward(train: TrainSpec) -> None:
    """torchtune's optimizer_in_bwd (training/memory.py register_optim_in_bwd_hooks; its single-device full
    fine-tuning recipe refuses gradient accumulation with it), on torch's own optimizers, with no master copy
    to convert gradients into (planner's bf16-mixed without DeepSpeed steps fp32 masters after backward)."""
    if train.uses_deepspeed:
        raise PlannerError("--optimizer-in-backward steps torch optimizers in the gradients' hooks; DeepSpeed ZeRO "
                           "owns the gradients and the step: use --zero 0.")
    if train.uses_fsdp2:
        raise PlannerError("--optimizer-in-backward with FSDP2 is not modelled yet (the hooks step sharded "
                           "gradients after each reduce-scatter); use --zero 0.")
    if train.method is not Method.FULL:
        raise PlannerError("--optimizer-in-backward is modelled for full fine-tuning (torchtune's full fine-tuning "
                           "recipes); LoRA's adapter gradients are small anyway.")
    if train.grad_accum > 1:
        raise PlannerError("--optimizer-in-backward steps at every backward, so gradients cannot accumulate "
                           "(torchtune refuses it too); use --grad-accum 1.")
    if train.precision.has_master_weights:
        raise PlannerError(f"--optimizer-in-backward with --precision {train.precision.value} (fp32 master weights) "
                           "is not a recipe any library runs; use bf16 (torchtune's), fp32 or bf16-autocast.")
    if train.optimizer not in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED, Optimizer.SGD):
        raise PlannerError(f"--optimizer-in-backward is modelled with torch's adamw, adamw-fused and sgd, not "
                           f"{train.optimizer.value!r}.")


# ---------------------------------------------------------------- (de)serialisation


def train_spec_to_dict(train: TrainSpec) -> dict[str, Any]:
    """A JSON-ready dict of every TrainSpec field (enums as their values)."""
    return {
        "method": train.method.value,
        "precision": train.precision.value,
        "optimizer": train.optimizer.value,
        "lora": {
            "rank": train.lora.rank,
            "alpha": train.lora.alpha,
            "dropout": train.lora.dropout,
            "targets": list(train.lora.targets),
            "modules_to_save": list(train.lora.modules_to_save),
        },
        "quant": {
            "quant_type": train.quant.quant_type.value,
            "double_quant": train.quant.double_quant,
            "blocksize": train.quant.blocksize,
        },
        "zero_stage": train.zero_stage,
        "offload": train.offload.value,
        # DeepSpeed's buckets and thresholds, only when a --deepspeed-config set them (absent: "auto")
        **({} if train.parallelism.zero_config.is_default else {"zero_config": train.parallelism.zero_config.to_dict()}),
        # FSDP2 only (absent: DDP or DeepSpeed, as before FSDP2 existed)
        **({"engine": "fsdp2", "fsdp": train.parallelism.fsdp_config.to_dict()} if train.uses_fsdp2 else {}),
        # DeepSpeed at stage 0 only: the dicts of every other layout stay as they were (cells are named by them)
        **({"engine": "deepspeed"} if train.uses_deepspeed and train.zero_stage == 0 else {}),
        "micro_batch": train.micro_batch,
        "seq_len": train.seq_len,
        "grad_accum": train.grad_accum,
        "grad_checkpointing": train.grad_checkpointing,
        "attn_impl": train.attn_impl.value,
        "dropout": train.dropout,
        "lora_dtype": train.lora_dtype.value,
        "qlora_prep": train.qlora_prep.value,
        "activation_offload": train.activation_offload,
        "loss": train.loss.to_dict(),
        "optimizer_in_backward": train.optimizer_in_backward,
        # post-training only (absent: sft, so every earlier plan and golden file reads the same)
        **({} if train.task.is_default else {"task": train.task.to_dict()}),
        "compile": train.compile,
        # only when on (absent: unpacked rows, so every earlier plan and golden file reads the same)
        **({"packing": True} if train.packing else {}),
        # selective activation checkpointing only (absent: off, so every earlier plan and golden file reads the same)
        **({"selective_ac": train.selective_ac} if train.selective_ac else {}),
    }


def _check_deepspeed_stage0(train: TrainSpec) -> None:
    """DeepSpeed's own engine at ZeRO stage 0 (estimate/ds_stage0.py) as modelled and profiled: full fine-tuning
    under bf16-mixed with a torch AdamW, the HF Trainer's client optimizer, which DeepSpeed 0.19 wraps in its
    FP16_UnfusedOptimizer (engine.py ``_do_optimizer_sanity_check`` returns DDP_BFLOAT16 when the model and
    gradient-accumulation dtypes are both bf16)."""
    if train.precision is not Precision.BF16_MIXED:
        raise PlannerError(f"DeepSpeed at ZeRO stage 0 is modelled with --precision bf16-mixed only, not "
                           f"{train.precision.value}; use bf16-mixed, or --engine ddp.")
    if train.method is not Method.FULL:
        raise PlannerError(f"DeepSpeed at ZeRO stage 0 is modelled for full fine-tuning only, not "
                           f"{train.method.value}; use --method full, or --engine ddp.")
    if train.optimizer not in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED):
        raise PlannerError(f"optimizer {train.optimizer.value!r} with DeepSpeed at ZeRO stage 0 is not modelled; "
                           "use adamw or adamw-fused.")


def _check_dpo_deepspeed(train: TrainSpec) -> None:
    """What --task dpo is modelled with under DeepSpeed ZeRO (estimate/posttrain.py: the policy as supervised
    training, the reference as TRL's prepare_deepspeed makes it); the rest is refused in one sentence."""
    k = train.task.kind.value
    if train.task.kind is not Task.DPO:
        why = ("PPO follows TRL 1.12's PPOTrainer, which is not installed" if train.task.kind is Task.PPO
               else "GRPO's generation and its reference under TRL's prepare_deepspeed are not written down")
        raise PlannerError(f"--task {k} with DeepSpeed is not modelled yet ({why}); use --zero 0.")
    if train.zero_stage == 0:
        raise PlannerError("--task dpo with DeepSpeed's engine at ZeRO stage 0 is not modelled yet (no cell measures "
                           "TRL's DPOTrainer under it); use --zero 1, 2 or 3, or drop --engine deepspeed.")
    if train.method is Method.QLORA:
        raise PlannerError("--task dpo with QLoRA and DeepSpeed is not modelled yet; use --method lora or --zero 0.")
    if train.offload is not Offload.NONE:
        raise PlannerError("--task dpo with DeepSpeed offload is not modelled yet (TRL's prepare_deepspeed drops "
                           "offload_optimizer from the reference's config but keeps offload_param); drop --offload.")
    if train.task.reference_for(train.method is not Method.FULL) is Reference.PRECOMPUTED:
        raise PlannerError("--task dpo with --reference precomputed and DeepSpeed is not modelled yet (TRL wraps the "
                           "policy in a second engine to precompute); use --reference copy or --zero 0.")


def _check_fsdp2(train: TrainSpec) -> None:
    """What planner runs and models under FSDP2 (the profiler's real ``fully_shard``; estimate/fsdp2.py)."""
    if train.method is Method.QLORA and (train.precision is not Precision.BF16_MIXED
                                         or train.parallelism.fsdp_config.cpu_offload):
        raise PlannerError("QLoRA with FSDP2 is modelled with the bf16-mixed policy and no CPU offload (the "
                           "FSDP-QLoRA recipe, its 4-bit weights stored in bf16); use --precision bf16-mixed without "
                           "offload.")
    if train.precision is Precision.FP16_MIXED:
        raise PlannerError("fp16-mixed with FSDP2 needs torch's ShardedGradScaler, which planner does not model; "
                           "use bf16-mixed, bf16 or fp32.")
    if train.optimizer not in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED):
        raise PlannerError(f"optimizer {train.optimizer.value!r} with FSDP2 is not modelled (FSDP2 hands the "
                           "optimizer DTensor shards); use adamw or adamw-fused.")
    if train.activation_offload:
        raise PlannerError("--activation-offload with FSDP2 is not modelled yet.")
    if train.loss.kind.value != "standard":
        raise PlannerError(f"--loss {train.loss.kind.value} with FSDP2 is not modelled yet (the output head's "
                           "weight is a sharded DTensor outside the root's forward); use --loss standard.")
    if train.parallelism.fsdp_config.cpu_offload and train.optimizer is Optimizer.ADAMW_FUSED:
        raise PlannerError("FSDP2's CPU offload steps the optimizer on the host; use adamw, not adamw-fused.")


def _parallelism_from_dict(d: dict[str, Any]) -> Parallelism:
    engine = d.get("engine")
    if engine == Engine.FSDP2.value:
        return Parallelism.fsdp2(FsdpConfig.from_dict(d.get("fsdp") or {}))
    if engine not in (None, Engine.DDP.value, Engine.DEEPSPEED.value):
        raise PlannerError(f"unknown parallelism engine {engine!r}; use one of "
                           f"{', '.join(e.value for e in Engine)}.")
    return Parallelism.from_zero(int(d["zero_stage"]), Offload(d.get("offload", "none")),
                                 ZeroConfig.from_dict(d.get("zero_config") or {}),
                                 deepspeed_stage0=engine == Engine.DEEPSPEED.value)


def train_spec_from_dict(d: dict[str, Any]) -> TrainSpec:
    """Inverse of train_spec_to_dict; raises PlannerError on a malformed dict."""
    try:
        lora = d.get("lora", {})
        quant = d.get("quant", {})
        return TrainSpec(
            method=Method(d["method"]),
            precision=Precision(d["precision"]),
            optimizer=Optimizer(d["optimizer"]),
            lora=LoraSpec(
                rank=int(lora.get("rank", 16)),
                alpha=int(lora.get("alpha", 32)),
                dropout=float(lora.get("dropout", 0.05)),
                targets=tuple(lora.get("targets", ["all-linear"])),
                modules_to_save=tuple(lora.get("modules_to_save", [])),
            ),
            quant=QuantSpec(
                quant_type=QuantType(quant.get("quant_type", "nf4")),
                double_quant=bool(quant.get("double_quant", True)),
                blocksize=int(quant.get("blocksize", 64)),
            ),
            parallelism=_parallelism_from_dict(d),
            micro_batch=int(d["micro_batch"]),
            seq_len=int(d["seq_len"]),
            grad_accum=int(d.get("grad_accum", 1)),
            grad_checkpointing=bool(d.get("grad_checkpointing", False)),
            attn_impl=AttnImpl(d.get("attn_impl", "sdpa")),
            dropout=d.get("dropout"),
            lora_dtype=PeftDtype(d.get("lora_dtype", "fp32")),
            qlora_prep=PeftDtype(d.get("qlora_prep", "fp32")),
            activation_offload=bool(d.get("activation_offload", False)),
            loss=LossSpec.from_dict(d.get("loss")),
            optimizer_in_backward=bool(d.get("optimizer_in_backward", False)),
            task=TaskSpec.from_dict(d.get("task")),
            compile=bool(d.get("compile", False)),
            packing=bool(d.get("packing", False)),
            selective_ac=str(d.get("selective_ac", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlannerError(f"the training specification is malformed ({type(exc).__name__}: {exc}).") from None
