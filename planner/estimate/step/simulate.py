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

The step's inputs and cache key (``StepInputs``, ``step_inputs``, the field audit) are in inputs.py, one layer's
run and checkpoint recomputation (``run_layer``) and the backward hooks in layer_runner.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from planner.errors import PlannerError
from planner.estimate.step import autocast, late_segments, loss_recipes, selective_layers, trl_loss
from planner.estimate.step import offload as packing
from planner.estimate.step.cpu_kernels import CpuKernels
from planner.estimate.step.envelope import ENVELOPE_POINTS, Run, StepEnvelope, StepProfile
from planner.estimate.step.family_layers import build_family
from planner.estimate.step.grpo_step import grpo_loss
from planner.estimate.step.inputs import (
    LORA_FIELDS_IGNORED,
    LORA_FIELDS_READ,
    PARALLELISM_FIELDS_IGNORED,
    PARALLELISM_FIELDS_READ,
    TRAIN_FIELDS_IGNORED,
    TRAIN_FIELDS_READ,
    StepInputs,
    cpu_kind,
    lora_adapter_paths,
    step_inputs,
)
from planner.estimate.step.layer_runner import chain_hook, ghost_swap_hook, run_layer
from planner.estimate.step.logits import causal_lm_loss
from planner.estimate.step.posttrain_step import dpo_loss
from planner.estimate.step.ppo_step import ppo_policy_loss
from planner.estimate.step.tape import Fake, Sim, Tape, backward
from planner.specs import Loss, ModelSpec, TrainSpec

NUM_SIMULATED_LAYERS = 3
TOP_LAYER_ENTRY = "backward_top_layer_entry"  # Sim.marks (FSDP2: fsdp2_step.py)


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
    direct = (train.micro_batch == 1 or train.packing or cpu_kind(device, cpu) is not None or train.activation_offload
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



@lru_cache(maxsize=512)
def _simulate(inputs: StepInputs) -> Run:
    return _run_step(inputs, Sim(record=True))


def _run_step(inputs: StepInputs, sim: Sim) -> Run:
    """One forward + backward on ``sim`` (``_simulate``'s, or ``trace_step``'s tracing one)."""
    model, b, s, ckpt = inputs.model, inputs.micro_batch, inputs.seq_len, inputs.grad_checkpointing or inputs.sac_op
    keep_grads = inputs.keep_grads
    t = Tape(sim, device=inputs.device, cpu=inputs.cpu, hold_grads_over=inputs.hold_grads_over,
             keep_param_grads=keep_grads)
    t.zero3_bucket = inputs.zero3_bucket
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
            h = run_layer(t, fam, i, h, extras, ckpt or i in inputs.ckpt_layers, hooks, inputs.sac_op)
            if i == 1:
                layer_saved[0] = sim.saved - before
                layer_host[:] = [sim.host - host, sim.host_pinned - pinned]
                if ghost:
                    sim.ghost(ghost * layer_saved[0], saved=True)
                    sim.host += ghost * layer_host[0]
                    sim.host_pinned += ghost * layer_host[1]
                    ghost_swap_hook(sim, hooks, fam, ghost * layer_saved[0], ghost * layer_grads,
                                     (ghost * layer_host[0], ghost * layer_host[1]))
                    if t.hold_grads_over:
                        # ZeRO-2: the ghost layers' gradients have arrived too (late_segments.py counts the
                        # elements reduced in flat order)
                        chain_hook(hooks, fam.last_node_of_layer.get(1), lambda: setattr(
                            t, "arrived_elements", t.arrived_elements + ghost * fam.layer_grad_numel))
        return h

    # held_logits: with keep_logits, the caller's output object keeps the logits alive through backward
    t.packing = offload  # save_on_cpu around the model's forward, which computes the loss (offload.py)
    t.autocast = t.autocast_step = inputs.precision.autocast_dtype  # accelerate's autocast around it (autocast.py)
    if inputs.ppo_response:
        loss, logits_bytes, held_logits = ppo_policy_loss(t, fam, ids, run_layers, inputs.ppo_response)
    elif inputs.grpo_completion:
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
    top = fam.last_node_of_layer.get(sim_layers - 1)
    if inputs.split_loss and top is not None:
        # FSDP2: the live bytes as the top simulated layer's backward begins, before its hooks (recomputation,
        # the ghost layers' swap): with any ghost layers' activations still alive, the top decoder layer's
        # pre-backward moment (fsdp2_step.py)
        after_top = hooks.get(id(top))

        def top_entry() -> None:
            sim.mark(TOP_LAYER_ENTRY)
            if sim_layers >= 3:  # with two, the top layer is layer 1, whose own segment starts in after_top
                late_segments.enter_top(t)
            if after_top is not None:
                after_top()

        hooks[id(top)] = top_entry
    host_end = (sim.host, sim.host_pinned)  # every packed copy exists now; backward only frees them
    fwd_peak = sim.peaks["forward"]
    if inputs.split_loss:
        # FSDP2 gathers the root's parameters again when the logits' gradient arrives (_fsdp_state.py
        # _pre_backward, a hook on the root's outputs): the output head's backward starts a phase of its own
        head = next(n for n in reversed(sim.nodes) if n.name == "linear")
        chain_hook(hooks, head, lambda: sim.set_phase("backward_late"))
    scoring = sim.peaks.get("scoring")
    if scoring is not None and scoring.live_bytes > fwd_peak.live_bytes:
        fwd_peak = scoring  # the reference forward's working set on top of the policy's activations
    backward(t, loss, hooks)
    sim.flush()
    bwd_end = sim.live
    bucket_end = sum(g.nbytes for g in t.bucket_held)  # ZeRO-3 without contiguous gradients: the last bucket, not yet reduced
    del loss, held_logits
    bwd = sim.peaks.get("backward")
    late = late_segments.late_peak(sim.peaks) or bwd
    late_tuples = {ph: (p.live_bytes, p.saved_bytes, p.grads_bytes) for ph, p in sim.peaks.items()}
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
        backward_late_segments=late_segments.segment_peaks(late_tuples),
        # only with a gradient larger than the bucket: without one, core.py shares this step with the row that has
        # no bucket rule (hold_grads_over=0: no sub-segment), and the buffer is placed at its segment's start
        backward_late_flushes=late_segments.flush_peaks(late_tuples) if t.held_any else (),
        grads_bytes=grads_total,
        backward_end_bytes=bwd_end,
        bucket_end_grads_bytes=bucket_end,
        per_layer_saved_bytes=layer_saved[0],
        logits_bytes=logits_bytes,
        notes=tuple(fam.notes),
        unknown_matmuls=tuple(sorted(t.unknown_matmuls)),
        offloaded_bytes=host_end[0],
        offloaded_pinned_bytes=host_end[1],
        **({"forward_loss_peak_bytes": floss.live_bytes, "forward_loss_peak_saved_bytes": floss.saved_bytes}
           if (floss := sim.peaks.get("forward_loss")) else {}),
        scoring_peak_bytes=scoring.live_bytes if scoring is not None else 0,
        **({"layer_backward_entry_bytes": entry.live_bytes, "layer_backward_entry_saved_bytes": entry.saved_bytes}
           if (entry := sim.marks.get(TOP_LAYER_ENTRY)) else {}),
    )
    return Run(profile=profile, candidates=tuple(sim.record))


# the step's inputs (inputs.py) stay importable from here, where the tests and the estimator find them
__all__ = ["LORA_FIELDS_IGNORED", "LORA_FIELDS_READ", "PARALLELISM_FIELDS_IGNORED", "PARALLELISM_FIELDS_READ",
           "TRAIN_FIELDS_IGNORED", "TRAIN_FIELDS_READ", "StepInputs", "StepProfile", "StepTrace", "lora_adapter_paths",
           "simulate_step", "step_inputs", "trace_step"]
