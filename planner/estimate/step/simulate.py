"""Saved activations and the memory of one forward/backward, per family, by simulating the HF forward.

``simulate_step`` builds the model's forward on the symbolic tape (layers.py, logits.py) for one micro-batch,
then replays the backward, and returns what was alive at each moment that matters (``StepProfile``). Layers
are written per family from the installed transformers code:

- llama, mistral, qwen2 (QKV bias), qwen3 (per-head q/k RMSNorm), phi3 (fused qkv and gate_up): RMSNorm in fp32,
  rotary, grouped-query attention, SwiGLU;
- gemma2: four RMSNorms per layer with ``(1 + w)``, scaled embedding, attention-logit and final-logit tanh
  softcapping, gelu-tanh; no SDPA support in transformers (``_supports_sdpa = False``): sdpa runs eager;
- gpt2: LayerNorm, fused Conv1D c_attn, gelu_new (Python composite), dropout on embeddings, attention
  probabilities and both residual branches, learned positions;
- mixtral, qwen2_moe-like (qwen3_moe): attention as llama, sparse MoE block with top-k routing.

Methods: full (everything trainable), LoRA (peft 0.21: adapters in fp32 on a 16-bit base, inputs cast to
fp32 and saved by lora_A; frozen base linears save nothing; without checkpointing the frozen embedding's output
needs no gradient, so layer 0 saves less), QLoRA (bitsandbytes 4-bit base dequantized per matmul, peft's
defensive clone). Gradient checkpointing follows torch's non-reentrant checkpoint: layer inputs, kwargs and
RNG states kept; recomputation at the first unpack, with early stop.

Only 3 layers are simulated one by one; the middle layer stands for the other L - 3 (``Sim.ghost``): their
saved bytes are added after it in forward and swapped for their gradients before it in backward, which gives
the exact end-of-forward bytes and the backward peak (it is at one end of a run of identical layers).
Validated against CPU measurements (tests/test_activations.py, tests/memprobe.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from planner.errors import PlannerError
from planner.estimate import peft_dtypes
from planner.estimate.step import (
    autocast,
    in_backward,
    late_segments,
    loss_recipes,
    selective_layers,
    trl_loss,
)
from planner.estimate.step import offload as packing
from planner.estimate.step.cpu_kernels import CpuKernels
from planner.estimate.step.envelope import ENVELOPE_POINTS, Run, StepEnvelope, StepProfile
from planner.estimate.step.family_layers import build_family
from planner.estimate.step.grpo_step import grpo_loss
from planner.estimate.step.logits import causal_lm_loss
from planner.estimate.step.posttrain_step import dpo_loss
from planner.estimate.step.tape import Fake, Node, Sim, StopRecompute, Tape, backward, release
from planner.specs import Loss, LossSpec, Method, ModelSpec, Precision, Task, TrainSpec

NUM_SIMULATED_LAYERS = 3
# torch.utils.checkpoint (preserve_rng_state=True) stores the CPU generator state with every checkpointed
# region: torch.get_rng_state() is a 5,056-byte uint8 tensor (mt19937 state) -- also on CUDA, next to the
# device generators' seed/offset (16 bytes each).
CHECKPOINT_RNG_STATE_BYTES = 5056
CUDA_RNG_STATE_BYTES = 16


# What the simulated step reads from a TrainSpec, field by field: every field is either read (through
# StepInputs, built only by step_inputs) or ignored with the reason. tests/test_step_inputs.py fails when a
# TrainSpec or LoraSpec field is in neither, so a new field cannot be silently left out of the cache key.
TRAIN_FIELDS_READ = ("method", "precision", "micro_batch", "seq_len", "grad_checkpointing", "attn_impl", "dropout",
                     "lora", "parallelism", "activation_offload", "loss", "lora_dtype",
                     "qlora_prep",  # these two as dtypes (peft_dtypes.py)
                     "optimizer_in_backward",  # as the step's scratch per element (in_backward.scratch_per_element)
                     "task",  # as the reference the DPO step runs (posttrain_step.py), GRPO's (grpo_step.py)
                     "packing",  # as one row of micro_batch * seq_len tokens with its mask (packed.py)
                     "selective_ac")  # the layer policy's checkpointed layers (selective_layers.py; op: none)
TRAIN_FIELDS_IGNORED = {
    "optimizer": "the step ends before optimizer.step(): optimizer states and their scratch are states.py's and "
                 "temporaries.py's (with --optimizer-in-backward its per-tensor scratch arrives through "
                 "optimizer_in_backward's step_in_backward)",
    "quant": "the 4-bit storage format changes the weights' bytes (quant.py), not the step: each 4-bit matmul "
             "dequantizes to the compute dtype whatever the quant type, double quantization or block size",
    "grad_accum": "one micro-batch is simulated; accumulation repeats it (peak.py keeps gradients across them)",
    "compile": "the estimate keeps eager PyTorch's step: what inductor saves has no stable rule (compile_note.py)",
}
# the engine and the stage through _zero_key
PARALLELISM_FIELDS_READ = ("engine", "zero_stage")
PARALLELISM_FIELDS_IGNORED = {
    "offload": "the one thing offload changes in the step (ZeRO-2 holding a gradient larger than the reduce "
               "bucket, which an offloaded optimizer does not) arrives as hold_grads_over (core.py)",
    "fsdp_config": "FSDP2's gathers, resharding and reduce buffers are added per phase (estimate/fsdp2_step.py); "
                   "the step only splits the loss from the rest (split_loss)",
    "zero_config": "of DeepSpeed's buckets and thresholds the step reads only the reduce bucket, which arrives as "
                   "hold_grads_over (core.py); the others size buffers outside the step (temporaries.py, "
                   "sharding.py)",
}
LORA_FIELDS_READ = ("rank", "targets", "dropout", "modules_to_save")  # rank and targets through the adapters
LORA_FIELDS_IGNORED = {
    "alpha": "the adapter scale multiplies by a Python float: the same tensors whatever its value",
}


@dataclass(frozen=True)
class StepInputs:
    """Exactly what one simulated step reads: the simulation's cache key, built only by ``step_inputs``.

    ``_simulate`` receives nothing else, so a value that is not here cannot change a simulation, and one that
    is here cannot be left out of the key. ``config_json``: ModelSpec equality ignores the raw config, where
    the family details live. ``zero``: what the ZeRO stage changes in the step (``_zero_key``).
    """

    model: ModelSpec
    config_json: str
    method: Method
    precision: Precision
    micro_batch: int
    seq_len: int
    grad_checkpointing: bool
    attn_impl: str
    dropout: float | None
    adapters: tuple[tuple[str, int], ...]
    lora_dropout: float
    modules_to_save: tuple[str, ...]
    zero: int
    device: str
    keep_grads: bool
    keep_logits: bool
    hold_grads_over: int
    cpu: CpuKernels | None
    loss: LossSpec
    adapter_dtype: str = "fp32"  # LoRA adapters (peft_dtypes.adapter_dtype)
    unquantized_dtype: str = "fp32"  # QLoRA's unquantized parameters and activations (peft_dtypes)
    activation_offload: bool = False
    # optimizer in backward: the step's scratch per parameter element (tape._step_in_hook); None: off
    step_in_backward: int | None = None
    # FSDP2: the loss's backward is the phase "backward", the output head's and everything after "backward_late"
    split_loss: bool = False
    # --task dpo: the reference the step runs (posttrain_step.py); "" for sft
    reference: str = ""
    # --packing: the micro-batch's rows flattened into one (micro_batch 1) with the mask built from the reset
    # position ids (packed.py)
    packed: bool = False
    # --task grpo: the completion's tokens of each row (grpo_step.py; 0 otherwise) and whether beta != 0
    grpo_completion: int = 0
    grpo_kl: bool = False
    # --selective-ac N: the decoder layers checkpointed, every layer simulated (selective_layers.py)
    ckpt_layers: tuple[int, ...] = ()
    # --selective-ac op, where the step models the policy's cache (selective_layers.op_modelled; sac.py)
    sac_op: bool = False


def step_inputs(model: ModelSpec, train: TrainSpec, *, device: str = "cuda", keep_grads: bool = True,
                keep_logits: bool = False, adapters: tuple[tuple[str, int], ...] | None = None,
                hold_grads_over: int = 0, cpu: CpuKernels | None = None,
                micro_batch: int | None = None) -> StepInputs:
    """The inputs of ``simulate_step`` (same arguments) as the one frozen value its simulations are cached by.
    ``micro_batch``: in place of the train spec's (0: the envelope's key, for every micro-batch)."""
    if adapters is None:
        adapters = lora_adapter_paths(model, train)
    reference = train.task.reference_for(train.method is not Method.FULL)
    rows = train.micro_batch if micro_batch is None else micro_batch
    dpo = train.task.kind is Task.DPO
    grpo = train.task.grpo
    if dpo:
        rows *= 2  # DataCollatorForPreference: chosen and rejected rows in one batch (posttrain_step.py)
    seq_len = train.seq_len
    if train.packing:  # the collator's one row of every token (packed.py)
        rows, seq_len = 1, rows * seq_len
    return StepInputs(
        model=model, config_json=model.config_json(), method=train.method, precision=train.precision,
        micro_batch=rows, seq_len=seq_len, grad_checkpointing=train.grad_checkpointing,
        # DPOConfig.disable_dropout (default True): disable_dropout_in_model sets every nn.Dropout's p to 0, the
        # model's and peft's lora_dropout alike (dpo_trainer.py __init__), and F.dropout with p 0 returns its input.
        # GRPOConfig.disable_dropout defaults to False: GRPO keeps the model's dropout
        attn_impl=train.attn_impl.value, dropout=0.0 if dpo else train.dropout, adapters=adapters,
        lora_dropout=0.0 if dpo else train.lora.dropout,
        modules_to_save=train.lora.modules_to_save, zero=_zero_key(train), device=device, keep_grads=keep_grads,
        keep_logits=keep_logits, hold_grads_over=hold_grads_over, cpu=_cpu_kind(device, cpu),
        adapter_dtype=peft_dtypes.adapter_dtype(train), unquantized_dtype=peft_dtypes.unquantized_dtype(train),
        activation_offload=train.activation_offload, split_loss=train.uses_fsdp2,
        step_in_backward=in_backward.scratch_per_element(train) if keep_grads else None,
        loss=train.loss if train.loss.kind is Loss.CHUNKED_CE else LossSpec(train.loss.kind),  # chunks: chunked only
        reference=reference.value if reference is not None else "",
        packed=train.packing,
        grpo_completion=grpo.completion_len if grpo is not None else 0,
        grpo_kl=grpo is not None and grpo.uses_reference,
        ckpt_layers=selective_layers.step_checkpointed_layers(train.selective_ac, model.num_layers),
        sac_op=selective_layers.op_modelled(train),
    )


def _cpu_kind(device: str, cpu: CpuKernels | None) -> CpuKernels | None:
    """Only oneDNN's workspaces depend on the CPU kind: other kinds and devices share one simulation."""
    return cpu if device == "cpu" and cpu is not None and cpu.onednn_bf16 else None


def simulate_step(model: ModelSpec, train: TrainSpec, *, device: str = "cuda", keep_grads: bool = True,
                  keep_logits: bool = False, adapters: tuple[tuple[str, int], ...] | None = None,
                  hold_grads_over: int = 0, cpu: CpuKernels | None = None) -> StepProfile:
    """One micro-batch forward + backward. ``keep_grads``: parameter gradients stay (ZeRO 0/1) or are reduced
    away as they arrive (ZeRO 2/3, counted by the sharded model states instead). ``adapters``: (path, rank)
    of every LoRA adapter (default: planner.estimate.count.params.lora_adapters of the train spec).
    ``hold_grads_over``: ZeRO-2's reduce bucket in elements; a larger gradient stays until the next arrives.
    ``cpu``: on ``device="cpu"``, the CPU kind the run is measured on (cpu_kernels.py; None: no oneDNN)."""
    # oneDNN's workspace is not linear in the micro-batch (blocking heuristics): simulated directly. Otherwise
    # every tensor's size is linear in the micro-batch and the order of allocations does not depend on it: two
    # simulations (micro-batch 2 and 3) give every candidate peak as a line in b (envelope.py).
    # Activation offloading's pinned host bytes round each copy to a power of two: not linear either.
    # TRL's fused LM head tiles b * (s - 1) tokens by 4096 (--task dpo: min(tokens, 4096) rows; trl_loss.py): linear
    # in the micro-batch only within one tile.
    # Liger's fused linear cross-entropy rounds its chunk of b * s tokens up to a power of two (loss_recipes.py).
    # Packing flattens the micro-batch into one row whose [tokens, tokens] mask grows with its square (packed.py).
    direct = (train.micro_batch == 1 or train.packing or _cpu_kind(device, cpu) is not None or train.activation_offload
              or not train.task.is_default
              or (train.loss.kind is Loss.TRL_FUSED_LM_HEAD
                  and not trl_loss.is_linear_in_micro_batch((train.micro_batch, *ENVELOPE_POINTS), train.seq_len))
              or (train.loss.kind is Loss.FUSED_LINEAR_CE
                  and not loss_recipes.liger_is_linear_in_micro_batch(
                      (train.micro_batch, *ENVELOPE_POINTS), train.seq_len, model.vocab_size, model.hidden_size)))
    inputs = step_inputs(model, train, device=device, keep_grads=keep_grads, keep_logits=keep_logits,
                         adapters=adapters, hold_grads_over=hold_grads_over, cpu=cpu,
                         micro_batch=None if direct else 0)
    if direct:
        return _simulate(inputs).profile
    return _envelope(inputs).at(train.micro_batch)


@dataclass(frozen=True)
class StepTrace:
    """A debugging run of one simulation (``trace_step``): ``backward`` is (node name, live bytes) before every
    backward node; ``storages`` weak references to every storage the step made (``Storage.tag``: the op that
    made it), so those still alive after the step are the ones the simulation leaked."""

    run: Run
    backward: tuple[tuple[str, int], ...]
    storages: tuple


def trace_step(model: ModelSpec, train: TrainSpec, **kwargs) -> StepTrace:
    """``simulate_step``'s simulation (same arguments), run afresh, never cached, with its trace."""
    trace: list = []
    sim = Sim(record=True, trace=trace)
    run = _run_step(step_inputs(model, train, **kwargs), sim)
    return StepTrace(run=run, backward=tuple(trace), storages=tuple(sim.storages))


@lru_cache(maxsize=2048)
def _envelope(inputs: StepInputs) -> StepEnvelope:
    runs = [_simulate(replace(inputs, micro_batch=b)) for b in ENVELOPE_POINTS]
    return StepEnvelope.from_runs(runs[0], runs[1], ENVELOPE_POINTS)


def lora_adapter_paths(model: ModelSpec, train: TrainSpec) -> tuple[tuple[str, int], ...]:
    if train.method is Method.FULL:
        return ()
    return _adapter_paths(model, model.config_json(), train.lora)


@lru_cache(maxsize=256)
def _adapter_paths(model: ModelSpec, config_json: str, lora) -> tuple[tuple[str, int], ...]:
    """Cached per model and LoRA spec: every estimate of a LoRA row asks (a fit search dozens of times) and each
    answer counted the parameters again. ``config_json`` is in the key because ModelSpec equality ignores the
    raw config, where the family details live."""
    from planner.estimate.count.params import count_params, lora_adapters

    return tuple(sorted((a.path, a.rank) for a in lora_adapters(count_params(model), lora)))


def _zero_key(train: TrainSpec) -> int:
    """What the ZeRO stage changes in the simulated step. ZeRO-3 (any method): DeepSpeed's
    LinearFunctionForZeroStage3 in place of F.linear (zero/linear.py), which saves every input and computes the
    input's gradient before the weight's, as new tensors (layers.Ctx.zero3_linear, ops.linear). ZeRO 1/2: nothing
    for full fine-tuning; for LoRA/QLoRA, DeepSpeed's dtype casts. Equal keys share one simulation."""
    if not train.uses_deepspeed:
        return 0
    if train.zero_stage == 3:
        return 3
    return 0 if train.method is Method.FULL else 1


@lru_cache(maxsize=512)
def _simulate(inputs: StepInputs) -> Run:
    return _run_step(inputs, Sim(record=True))


def _run_step(inputs: StepInputs, sim: Sim) -> Run:
    """One forward + backward on ``sim`` (``_simulate``'s, or ``trace_step``'s tracing one)."""
    model, b, s, ckpt = inputs.model, inputs.micro_batch, inputs.seq_len, inputs.grad_checkpointing or inputs.sac_op
    keep_grads = inputs.keep_grads
    t = Tape(sim, device=inputs.device, cpu=inputs.cpu, hold_grads_over=inputs.hold_grads_over,
             keep_param_grads=keep_grads)
    t.step_in_backward = inputs.step_in_backward
    t.split_loss = inputs.split_loss
    # transformers' checkpointing calls enable_input_require_grads(): input_requires_grad
    offload = inputs.activation_offload
    if offload:
        packing.check_modelled(model)
    fam = build_family(model, method=inputs.method, precision=inputs.precision, b=b, s=s, attn=inputs.attn_impl,
                       dropout=inputs.dropout, adapters=inputs.adapters, lora_dropout=inputs.lora_dropout,
                       modules_to_save=inputs.modules_to_save, device=inputs.device, zero_stage=inputs.zero,
                       input_requires_grad=ckpt or bool(inputs.ckpt_layers), adapter_dtype=inputs.adapter_dtype,
                       unquantized_dtype=inputs.unquantized_dtype, packed=inputs.packed)
    num_layers = model.num_layers
    sim_layers = selective_layers.num_simulated(num_layers, inputs.ckpt_layers, NUM_SIMULATED_LAYERS)
    if sim_layers > NUM_SIMULATED_LAYERS:
        fam.weigh_every_layer(sim_layers)
    ghost = num_layers - sim_layers
    ids = Fake((b, s), "int64", None)  # the input batch: allocated before the step, counted as inputs
    sim.peaks.clear()
    sim.phase = "forward"
    hooks: dict[int, object] = {}
    layer_saved = [0]
    layer_host = [0, 0]  # layer 1's packed host bytes (requested, pinned): the ghost layers pack as much
    # the ghost layers' gradients exist at layer 1's backward, unless each is stepped and freed as it arrives
    layer_grads = fam.layer_grad_bytes if keep_grads and inputs.step_in_backward is None else 0

    def run_layers(h: Fake, extras) -> Fake:
        for i in range(sim_layers):
            before, host, pinned = sim.saved, sim.host, sim.host_pinned
            h = _run_layer(t, fam, i, h, extras, ckpt or i in inputs.ckpt_layers, hooks, inputs.sac_op)
            if i == 1:
                layer_saved[0] = sim.saved - before
                layer_host[:] = [sim.host - host, sim.host_pinned - pinned]
                if ghost:
                    sim.ghost(ghost * layer_saved[0], saved=True)
                    sim.host += ghost * layer_host[0]
                    sim.host_pinned += ghost * layer_host[1]
                    _ghost_swap_hook(sim, hooks, fam, ghost * layer_saved[0], ghost * layer_grads,
                                     (ghost * layer_host[0], ghost * layer_host[1]))
        return h

    # held_logits: with keep_logits, the caller's output object keeps the logits alive through backward
    t.packing = offload  # save_on_cpu around the model's forward, which computes the loss (offload.py)
    t.autocast = t.autocast_step = inputs.precision.autocast_dtype  # accelerate's autocast around it (autocast.py)
    if inputs.grpo_completion:
        loss, logits_bytes, held_logits = grpo_loss(t, fam, ids, run_layers, inputs.reference, sim_layers,
                                                    inputs.grpo_completion, inputs.grpo_kl)
    elif inputs.reference:
        loss, logits_bytes, held_logits = dpo_loss(t, fam, ids, run_layers, inputs.reference, sim_layers)
    else:
        loss, logits_bytes, held_logits = causal_lm_loss(t, fam, ids, run_layers,
                                                         keep_logits=inputs.keep_logits or bool(t.autocast),
                                                         loss=inputs.loss)
    t.packing = False
    if t.autocast:
        held_logits = autocast.exit_forward(t, held_logits, inputs.keep_logits)
    if loss.node is None:
        # no parameter of the simulated forward is trainable: there is no backward to estimate (peft refuses
        # such a run, 'No modules were targeted for adaptation', and the optimizer would get no parameters)
        raise PlannerError(
            f"nothing is trainable in this {inputs.method.value} run of {model.name!r}: no LoRA adapter or "
            "trainable module lies between the inputs and the loss (adapters: "
            f"{', '.join(p for p, _ in inputs.adapters) or 'none'}); "
            "choose other --lora-targets or --modules-to-save."
        )
    end = sim.mark("forward_end")
    late_segments.install(t, hooks, fam, sim_layers)
    host_end = (sim.host, sim.host_pinned)  # every packed copy exists now; backward only frees them
    fwd_peak = sim.peaks["forward"]
    if inputs.split_loss:
        # FSDP2 gathers the root's parameters again when the logits' gradient arrives (_fsdp_state.py
        # _pre_backward, a hook on the root's outputs): the output head's backward starts a phase of its own
        head = next(n for n in reversed(sim.nodes) if n.name == "linear")
        _chain_hook(hooks, head, lambda: sim.set_phase("backward_late"))
    scoring = sim.peaks.get("scoring")
    if scoring is not None and scoring.live_bytes > fwd_peak.live_bytes:
        fwd_peak = scoring  # the reference forward's working set on top of the policy's activations
    backward(t, loss, hooks)
    sim.flush()
    bwd_end = sim.live
    del loss, held_logits
    bwd = sim.peaks.get("backward")
    late = late_segments.late_peak(sim.peaks) or bwd
    grads_total = fam.total_grad_bytes(num_layers) if keep_grads else 0
    if layer_saved[0] == 0 and sim_layers == 1:
        layer_saved[0] = end.saved_bytes
    profile = StepProfile(
        forward_end_bytes=end.live_bytes,
        forward_end_saved_bytes=end.saved_bytes,
        forward_peak_bytes=fwd_peak.live_bytes,
        forward_peak_saved_bytes=fwd_peak.saved_bytes,
        backward_peak_bytes=bwd.live_bytes if bwd else end.live_bytes,
        backward_peak_saved_bytes=bwd.saved_bytes if bwd else end.saved_bytes,
        backward_peak_grads_bytes=bwd.grads_bytes if bwd else 0,
        backward_late_peak_bytes=late.live_bytes if late else end.live_bytes,
        backward_late_peak_saved_bytes=late.saved_bytes if late else end.saved_bytes,
        backward_late_peak_grads_bytes=late.grads_bytes if late else 0,
        backward_late_segments=late_segments.segment_peaks(
            lambda ph: (p.live_bytes, p.saved_bytes, p.grads_bytes) if (p := sim.peaks.get(ph)) else None),
        grads_bytes=grads_total,
        backward_end_bytes=bwd_end,
        per_layer_saved_bytes=layer_saved[0],
        logits_bytes=logits_bytes,
        notes=tuple(fam.notes),
        unknown_matmuls=tuple(sorted(t.unknown_matmuls)),
        offloaded_bytes=host_end[0],
        offloaded_pinned_bytes=host_end[1],
        **({"forward_loss_peak_bytes": floss.live_bytes, "forward_loss_peak_saved_bytes": floss.saved_bytes}
           if (floss := sim.peaks.get("forward_loss")) else {}),
        scoring_peak_bytes=scoring.live_bytes if scoring is not None else 0,
    )
    return Run(profile=profile, candidates=tuple(sim.record))


def _ghost_swap_hook(sim: Sim, hooks: dict, fam, saved_bytes: int, grad_bytes: int,
                     host_bytes: tuple[int, int] = (0, 0)) -> None:
    """Before layer 1's backward: the ghost layers' activations (and host copies) are freed and their gradients
    exist."""
    node = fam.last_node_of_layer.get(1)
    if node is None:
        return

    def swap() -> None:
        sim.ghost(-saved_bytes, saved=True)
        sim.host -= host_bytes[0]
        sim.host_pinned -= host_bytes[1]
        sim.ghost(grad_bytes, grads=True)

    _chain_hook(hooks, node, swap)


def _chain_hook(hooks: dict, node, fn) -> None:
    prev = hooks.get(id(node))
    if prev is None:
        hooks[id(node)] = fn
    else:

        def both() -> None:
            prev()
            fn()

        hooks[id(node)] = both


def _run_layer(t: Tape, fam, i: int, h: Fake, extras, ckpt: bool, hooks: dict, sac_op: bool = False) -> Fake:
    """One decoder layer, plain or under non-reentrant activation checkpointing (transformers'
    GradientCheckpointingLayer with ``use_reentrant=False``): the forward keeps only the layer input (and the
    kwargs: mask, rotary tables); the first backward node of the layer recomputes the forward and the
    recomputed saved tensors are attached to the original nodes. (transformers 5.24 checkpoints only when
    ``torch.is_grad_enabled()``; a training step always has gradients enabled, so 5.23 and 5.24 agree.)"""
    start = len(t.sim.nodes)
    if not ckpt:
        out = fam.layer(t, i, h, extras)
        _note_last(t, fam, i, start)
        return out
    t.saving = False
    t.sac = selective_layers.recorder() if sac_op else None
    out = fam.layer(t, i, h, extras)
    held, t.sac = (t.sac.held if sac_op else []), None
    t.saving = True
    region = t.sim.nodes[start:]
    _note_last(t, fam, i, start)
    if not region:
        return out
    if held:  # the policy's cache lives with the region's checkpoint frame (sac.py)
        t.keep(region[0], [st for sts in held for st in sts])
    # the checkpoint frame keeps the layer input and the RNG state until the region is done
    rng = t.scratch(CHECKPOINT_RNG_STATE_BYTES + (CUDA_RNG_STATE_BYTES if fam.ctx.device != "cpu" else 0))
    kwargs = fam.layer_kwargs(i, extras)
    # the kwargs (mask, rotary tables) live as long as the frame: kept for backward like the input (and
    # counted once when layers share them)
    kept = [v for v in kwargs.values() if isinstance(v, Fake) and v.st is not None]
    shape, dtype, packed, h_in = h.shape, h.dtype, {}, h
    if t.packing:
        # the frame's save_inputs(*args) runs under save_on_cpu (offload.py)
        packed, kwargs = packing.pack_checkpoint_inputs(t.sim, region[0], h, kwargs, fam.kind, t.device)
        h_in = None
        t.keep(region[0], [rng] + [v for v in kwargs.values() if isinstance(v, Fake) and v.st is not None])
    else:
        t.keep(region[0], [h, rng] + kept)
    del rng, h, kept

    num_saving = sum(1 for n in region if n.has_saved)

    def recompute() -> None:
        saved_t = t.saving
        t.saving = True
        t.grad_enabled = True
        t.saves_left = num_saving
        mark = len(t.sim.nodes)
        # frame.get_inputs(): an offloaded input comes back as a device copy (CUDA) or as the host copy (CPU)
        unpacked = packing.unpack_checkpoint_inputs(t.sim, packed)
        src = h_in.st if h_in is not None else unpacked.pop(None).st
        layer_kwargs = kwargs | unpacked
        del unpacked
        # torch.random.fork_rng saves the current generator state while the stored one is replayed
        fork = t.scratch(CHECKPOINT_RNG_STATE_BYTES)
        # torch.utils.checkpoint's recompute_fn re-enters the forward's autocast (the outermost region in
        # backward): its weight casts are cached afresh and the cache is cleared when the recompute exits
        t.autocast = t.autocast_step
        t.sac = selective_layers.replayer(held, t.sim, region[0]) if held else None
        held.clear()  # the frame's entries are the region's hold now, each dropped as it is consumed
        try:
            fam.layer(t, i, _detached(shape, dtype, src), layer_kwargs)
        except StopRecompute:
            pass  # early stop: the rest of the layer is not re-run; its locals are freed with the traceback
        t.sac = None
        autocast.exit_recompute(t)
        t.saves_left = None
        fresh = t.sim.nodes[mark:]
        del t.sim.nodes[mark:]
        for orig, new in zip(region, fresh, strict=False):
            t.keep(orig, new.saved)
            release(t.sim, new)
        del fresh, fork, src, layer_kwargs
        t.grad_enabled = False
        t.saving = saved_t

    # Recomputation starts when backward first unpacks a saved tensor of the region: at the last node (in
    # creation order) that saves anything; nodes after it (residual add, casts) have run by then.
    trigger = next((n for n in reversed(region) if n.has_saved), region[-1])
    _chain_hook(hooks, trigger, recompute)
    return out


def _detached(shape, dtype: str, st) -> Fake:
    """The recomputation runs on the saved input (its storage), which requires grad."""
    sink = Node("ckpt_input", [], lambda *_: [], 1)
    return Fake(shape, dtype, st, sink, 0)


def _note_last(t: Tape, fam, i: int, start: int) -> None:
    if len(t.sim.nodes) > start:
        fam.last_node_of_layer[i] = t.sim.nodes[-1]


__all__ = ["StepInputs", "StepProfile", "StepTrace", "lora_adapter_paths", "simulate_step", "step_inputs", "trace_step"]
