"""FSDP2's step per rank: the simulated forward and backward with fully_shard's gathers and reductions added at
the moments torch 2.13 holds them (sources: estimate/fsdp2.py and torch/distributed/fsdp/_fully_shard/).

A steady-state step (gradients dropped by ``zero_grad(set_to_none=True)``) has four moments that can peak:

- **forward**: the sharded states, the forward's live bytes, and the gathered parameters. With
  ``reshard_after_forward`` the root group stays gathered for the whole model forward (``_fsdp_state.py``
  ``_post_forward`` reshards it last) and each layer holds its all-gather outputs plus the flat all-gather
  buffer (``comm_ctx.all_gather_state``, freed at the next group's copy-out): root + 2 layers is what a layer's
  forward sees (the forward's own peak may be the loss, after the root resharded: this is its bound). Without
  resharding every group stays gathered: all of them at the end of the forward.
- **loss backward** (the simulation's ``backward`` phase, ``StepInputs.split_loss``): before the logits'
  gradient reaches the root's pre-backward hook nothing is gathered with resharding; everything without.
- **head and layers backward** (``backward_late``): the root gathered again until the final callback
  (``_root_post_backward_final_callback``: the root's post-backward, its inputs need no gradient), a layer
  gathered and the next one prefetched (``_fsdp_param_group.py`` ``_backward_prefetch``), the layer's unsharded
  gradients in the compute dtype until its ``post_backward`` copies them into the reduce-scatter input, the
  previous layer's reduce-scatter input (``comm_ctx.reduce_scatter_states``), the root's unsharded gradients
  (reduced only in the final callback), and the sharded gradients reduced so far (bounded by all of the
  layers'). The simulation drops each parameter gradient as it arrives (``keep_grads`` False), so these are
  added once, at that phase's simulated peak.
- **optimizer step**: the sharded states and torch AdamW's foreach scratch (one copy of the second moment,
  temporaries.py ``ADAMW_FOREACH_SCRATCH_COPIES``) over the local shards.
"""

from __future__ import annotations

from dataclasses import replace

from planner.estimate import overhead
from planner.estimate.count.params import count_params, split_params
from planner.estimate.fsdp2 import compute_dtype, fsdp2_groups, fsdp2_states
from planner.estimate.hsdp import held_all_reduce_bytes, hsdp_note
from planner.estimate.qlora_shard import sharded_note
from planner.estimate.result import Estimate, MemoryBreakdown
from planner.estimate.step.cpu_kernels import CpuKernels
from planner.estimate.step.late_segments import TOP
from planner.estimate.step.simulate import lora_adapter_paths, simulate_step
from planner.estimate.temporaries import ADAMW_FOREACH_SCRATCH_COPIES
from planner.specs import Cluster, Method, ModelSpec, Optimizer, PeftDtype, Precision, TrainSpec
from planner.units import dtype_bytes

PHASES = ("forward", "backward", "optimizer_step")
# gloo's reduce-scatter (torch/csrc/distributed/c10d/ProcessGroupGloo.cpp, reached through
# dist.reduce_scatter_single) allocates a buffer the size of its input for the duration of the call: measured
# inside FSDP2's root reduce-scatter marker with `planner profile --engine fsdp2` on CPU (2 ranks). NCCL does not
# (not modelled on CUDA until GPU profiles say otherwise).
GLOO_REDUCE_SCATTER_INPUT_COPIES = 1
# gloo's all-gather (dist.all_gather_single from _fsdp_collectives.py DefaultAllGather) likewise allocates a buffer
# the size of its output inside the call (two in turn, one at a time): measured at every FSDP2 all-gather on CPU
# (2 ranks, `planner profile --engine fsdp2`); not modelled on CUDA.
GLOO_ALL_GATHER_OUTPUT_COPIES = 1


def sim_train(train: TrainSpec) -> TrainSpec:
    """What the compute sees: under the bf16 policy every parameter, LoRA adapters included, is all-gathered in
    bf16 (MixedPrecisionPolicy.param_dtype applies to every floating-point parameter), so peft's adapters run
    in bf16 as with ``--lora-dtype 16bit``."""
    if train.precision is Precision.BF16_MIXED and train.method is not Method.FULL:
        # QLoRA's unquantized parameters too (fp32 after prepare_model_for_kbit_training), so its activations are bf16
        return replace(train, lora_dtype=PeftDtype.BIT16, qlora_prep=PeftDtype.BIT16)
    return train


def fsdp2_phases(model: ModelSpec, train: TrainSpec, num_ranks: int, *, device: str, cpu: CpuKernels | None,
                 rank: int = 0) -> dict[str, MemoryBreakdown]:
    counts = count_params(model)
    # HSDP: every state is sharded over the shard group only (the mesh's last dim; a rank's index in it is its
    # mesh column), its buffers sized by it; the replicas' all-reduce adds the held buffers of hsdp.py
    num_ranks = train.parallelism.fsdp_config.shard_size(num_ranks)
    rank %= num_ranks
    st = fsdp2_states(counts, train, model.num_layers, num_ranks, rank)
    gs = fsdp2_groups(counts, train, model.num_layers)
    cfg = train.parallelism.fsdp_config
    cdt = compute_dtype(train)
    computed = sim_train(train)
    step = simulate_step(model, computed, device=device, keep_grads=False,
                         adapters=lora_adapter_paths(model, computed), cpu=cpu)
    cublas = overhead.allocated_overhead_bytes(device)
    base = dict(params_bytes=st.params_bytes, optimizer_states_bytes=st.optimizer_states_bytes,
                overhead_bytes=cublas)

    def unsharded_grads(g, *, after_layers_only: bool = False) -> int:
        return sum(num_ranks * t.padded_shard(num_ranks) * dtype_bytes(cdt or t.dtype) for t in g.tensors
                   if t.trainable and not (after_layers_only and t.before_layers))

    root = gs[0]
    reshard = cfg.reshard_after_forward
    # HSDP: the layers' reduce-dtype all-reduce buffers held to the end of backward (hsdp.py)
    # the dtype foreach_reduce reduces in: the policy's reduce_dtype (the profiler sets one under bf16-mixed only,
    # profile/fsdp2.py mixed_precision_policy), else the gradients' own (the compute dtype, or the parameter's)
    reduce_dtype = (cfg.reduce_dtype if cdt is not None else None) or cdt
    held = held_all_reduce_bytes(gs, reduce_dtype, num_ranks, root=False) if cfg.replicate_degree > 1 else 0
    root_grads = unsharded_grads(root)
    # foreach_reduce (_fsdp_collectives.py) binds each unsharded gradient to its loop variable ``unsharded_grad``
    # (the ``for i, (fsdp_param, unsharded_grad) in enumerate(zip(...))`` over a mesh of more than one rank):
    # ``unsharded_grads.clear()`` frees the others after the copy-in, but the group's last parameter with a
    # gradient keeps its unsharded gradient until foreach_reduce returns, through the reduce-scatter
    last = next((t for t in reversed(root.tensors) if t.trainable), None)
    root_last_grad = (num_ranks * last.padded_shard(num_ranks) * dtype_bytes(cdt or last.dtype)
                      if last is not None and num_ranks > 1 else 0)
    layers_sharded_grads = st.grads_bytes - root.shard_bytes(num_ranks, trainable_only=True)
    # the root's reduce-scatter output (foreach_reduce's ``reduce_output``, one padded shard per trainable
    # parameter in the reduce dtype): where that is the parameter's dtype ``_to_dtype_if_needed`` returns it and
    # the sharded gradients are views of it; otherwise (bf16 reduce under fp32 shards) it is a buffer of its own
    # until the cast after the reduce-scatter (and HSDP's all-reduce) makes the fp32 gradients beside it
    root_output_copy = sum(t.padded_shard(num_ranks) * dtype_bytes(reduce_dtype)
                           for t in root.tensors if t.trainable and reduce_dtype not in (None, t.dtype))
    root_output_grads = root.shard_bytes(num_ranks, trainable_only=True) if not root_output_copy else 0
    layer = gs[1] if len(gs) > 1 else None
    layer_sharded_grads = layer.shard_bytes(num_ranks, trainable_only=True) if layer else 0
    in_layer = train.grad_checkpointing and model.num_layers > 1
    # a prefetch's flat all-gather output; over a shard group of one rank _fsdp_param_group.py ``unshard`` (its
    # ``world_size == 1`` branch) wraps the group's existing ``_all_gather_output`` and allocates nothing: the
    # unsharded parameters are made in the group's own wait_for_unshard
    prefetched = st.layer_unsharded_bytes if reshard and num_ranks > 1 else 0
    above = (st.layer_reduce_input_bytes, layer_sharded_grads)
    late = (step.backward_late_peak_bytes, step.backward_late_peak_saved_bytes)
    neighbours: list = []
    if reshard:
        # each decoder layer's backward, checkpointed or not, one late-backward segment each (late_segments.py:
        # the top layer, layer 1 standing for the ghost layers below the top one, layer 0). Its pre_backward
        # (_fsdp_param_group.py pre_backward) copies its own all-gather out and frees the flat buffer
        # (wait_for_unshard: in backward "we free the all-gather result immediately after the current
        # copy-out"), then _backward_prefetch unshards the group before it in post_forward_order (one group per
        # module: ``post_forward_order[curr_index - 1]``), whose flat all-gather output (one layer's unsharded
        # size) lives through the whole layer's backward until that group's own copy-out; layer 0 (index 0)
        # prefetches nothing. Above the layer: the last reduce-scatter input (``reduce_scatter_states``, one
        # buffer) once a layer above has reduced, and the sharded gradients (and HSDP's held all-reduce buffers)
        # of every layer above. The top segment also holds the ghost layers' backward (layers 2 to L - 2, with
        # more than three layers): a ghost layer k holds the saved activations of layers 0..k and the sharded
        # gradients of the L - 1 - k above it, a sum linear in k over identical layers, so highest at an end of
        # the run: k = 1 is layer 1's own segment, k = L - 2 is bounded by the top segment's peak with one
        # layer above
        n = model.num_layers
        per_layer_held = (held_all_reduce_bytes((replace(layer, repeats=1),), reduce_dtype, num_ranks, root=False)
                          if layer is not None and cfg.replicate_degree > 1 else 0)
        segs = step.backward_late_segments
        # (segment index, a layer below it, layers above it)
        layout = ([(TOP, True, min(1, n - 3)), (1, True, n - 2), (2, False, n - 1)] if n >= 3
                  else [(1, True, 0), (2, False, 1)] if n == 2 else [(2, False, 0)])
        for index, below, n_above in layout:
            seg = segs[index] if len(segs) > index else (0, 0, 0)
            if not seg[0]:
                continue  # a segment the simulation did not reach
            neighbours.append((seg[:2], (prefetched if below else 0)
                               + (above[0] + n_above * per_layer_held if n_above > 0 else 0),
                               n_above * above[1]))
    else:
        # without resharding after forward every group stays gathered until its own post_backward reshards it
        # (_fsdp_param_group.py post_backward, reshard_after_backward): the top layer computes with all of them
        # gathered (the late backward's peak), the one below it (its own segment of the late backward,
        # late_segments.py: L0 with two layers, else L1) with all but the top one, whose reduce-scatter input and
        # sharded gradients exist
        segment = step.backward_late_segments[2 if model.num_layers == 2 else 1] if step.backward_late_segments \
            else (0, 0, 0)
        below = segment[:2] if segment[0] else late
        if in_layer:
            neighbours = [(late, 0, 0), (below, above[0] - st.layer_unsharded_bytes, above[1])]

    # a layer's pre-backward (_fsdp_param_group.py pre_backward: wait_for_unshard copies the layer's all-gather
    # out, then _backward_prefetch unshards the next layer, foreach_all_gather): the layer's unsharded parameters,
    # the next layer's flat all-gather output (one layer's unsharded size), gloo's copy of it inside the call, and
    # under the policy the bf16 copy-in of this rank's shards (_get_param_all_gather_inputs'
    # flat_foreach_copy_input, referenced by ``all_gather_inputs`` until foreach_all_gather returns)
    gather_next = 0
    if prefetched and model.num_layers > 1:
        gloo = GLOO_ALL_GATHER_OUTPUT_COPIES if device == "cpu" else 0
        copy_in = st.layer_unsharded_bytes // num_ranks if cdt is not None else 0
        gather_next = (1 + gloo) * st.layer_unsharded_bytes + copy_in

    def moment(live: int, saved: int, extra: int, grads: int = 0) -> MemoryBreakdown:
        return MemoryBreakdown(grads_bytes=grads, activations_bytes=saved, temporaries_bytes=live - saved + extra,
                               **base)

    forward = max((
        # inside the model: the root gathered, a layer's all-gather outputs and flat buffer (or every group)
        moment(step.forward_peak_bytes, step.forward_peak_saved_bytes,
               st.root_unsharded_bytes + 2 * st.layer_unsharded_bytes if reshard
               else st.all_unsharded_bytes + st.layer_unsharded_bytes),
        # the loss, after the root's post-forward resharded it and freed the last flat buffer
        moment(step.forward_loss_peak_bytes, step.forward_loss_peak_saved_bytes,
               0 if reshard else st.all_unsharded_bytes),
    ), key=lambda m: m.total_bytes)
    backward = max((
        # the loss backward: nothing gathered yet with resharding
        moment(step.backward_peak_bytes, step.backward_peak_saved_bytes, 0 if reshard else st.all_unsharded_bytes),
        # from the output head on: the root gathered again and the last layer's all-gather prefetched (the head)
        moment(step.backward_late_peak_bytes, step.backward_late_peak_saved_bytes,
               st.root_unsharded_bytes + st.layer_unsharded_bytes if reshard else st.all_unsharded_bytes),
        # the top decoder layer's pre-backward, before its recomputation: every layer's activations, the hidden
        # state's gradient, the root gathered and its gradients from the head, the layer gathered and the next
        # one's all-gather in flight (gather_next); every group gathered without resharding
        moment(step.layer_backward_entry_bytes, step.layer_backward_entry_saved_bytes,
               (st.root_unsharded_bytes + st.layer_unsharded_bytes + gather_next if reshard
                else st.all_unsharded_bytes) + unsharded_grads(root, after_layers_only=True)),
        # a decoder layer's backward (with resharding: each layer's own late-backward segment, checkpointed or
        # not; without: the top layer and the one below it, under checkpointing): the root and the layer gathered
        # (every group without resharding), the root's unsharded gradients waiting for the final callback, and of
        # the layer's neighbours the next one's prefetched flat buffer (a layer with one below it) and the one
        # above's reduce-scatter input and the sharded gradients of the layers above (``neighbours``). Under
        # checkpointing the segment's peak is the layer's recomputation (simulate.py). The layer's own unsharded
        # gradients (the unsharded parameters' .grad until its post_backward) are not added: non-reentrant
        # checkpointing (torch/utils/checkpoint.py, _checkpoint_hook's unpack_hook) recomputes the whole layer at
        # the first saved tensor its backward unpacks, before any of the layer's gradients exist (the measured
        # LoRA and QLoRA peaks are there), and at a later peak inside the layer's backward the simulation holds
        # the gradient its node makes (tape.py backward), not the ones made before it (GPT-2 fp32 without
        # resharding: 65,792 bytes, with the estimate still +1.9% over)
        *[moment(*peak, (st.root_unsharded_bytes + st.layer_unsharded_bytes if reshard else st.all_unsharded_bytes)
                 + unsharded_grads(root, after_layers_only=True) + extra, grads)
          for peak, extra, grads in neighbours],
        # the final callback: the root's unsharded gradients copied into its reduce-scatter input, every layer's
        # gradients reduced
        moment(step.backward_end_bytes, 0, root_grads + st.root_reduce_input_bytes + held, layers_sharded_grads),
        # then its reduce-scatter: the output beside the input (the root's sharded gradients themselves, or its
        # reduce-dtype buffer: root_output_copy), the root's last unsharded gradient (root_last_grad), HSDP's held
        # layer buffers, and on CPU gloo's copy of the input inside the call (GLOO_REDUCE_SCATTER_INPUT_COPIES)
        moment(step.backward_end_bytes, 0, root_last_grad + st.root_reduce_input_bytes * (
            1 + (GLOO_REDUCE_SCATTER_INPUT_COPIES if device == "cpu" else 0)) + held + root_output_copy,
            layers_sharded_grads + root_output_grads),
        # with a reduce-dtype buffer, the cast after it (foreach_reduce's ``reduce_output =
        # _to_dtype_if_needed(reduce_output, orig_dtype)``): the root's sharded gradients made beside the buffer
        # (still bound to ``reduce_output`` while the cast runs, and HSDP's ``all_reduce_input`` after), the input
        # (foreach_reduce's ``reduce_scatter_input``, returned to the final callback) and the loop variable's
        # gradient; gloo's copy is gone with its call. After the reduce-scatter in the list so that a tie (the
        # copy and the fp32 shards are equal over two ranks) is reported as the moment the profiles measure
        *([moment(step.backward_end_bytes, 0, root_last_grad + st.root_reduce_input_bytes + held + root_output_copy,
                  st.grads_bytes)] if root_output_copy else []),
    ), key=lambda m: m.total_bytes)
    copies = ADAMW_FOREACH_SCRATCH_COPIES if train.optimizer is Optimizer.ADAMW else 0
    moments = st.optimizer_states_bytes  # exp_avg + exp_avg_sq (+ step counters): one moment is half
    optimizer_step = MemoryBreakdown(grads_bytes=st.grads_bytes, temporaries_bytes=copies * (moments // 2), **base)
    return {"forward": forward, "backward": backward, "optimizer_step": optimizer_step}


def estimate_fsdp2(model: ModelSpec, train: TrainSpec, cluster: Cluster, *, margin: float, device: str,
                   rank: int | None, cpu: CpuKernels | None) -> Estimate:
    """``estimate()`` for the fsdp2 engine: rank 0's figures (it owns the most rows of an uneven dim 0)."""
    phases = fsdp2_phases(model, train, cluster.num_gpus, device=device, cpu=cpu, rank=rank or 0)
    host = 0
    offload = train.parallelism.fsdp_config.cpu_offload
    if offload and device == "cuda":
        # CPUOffloadPolicy: the sharded parameters, their gradients (copied to the host after each reduce-scatter,
        # _fsdp_collectives.py foreach_reduce) and the optimizer states (the step runs on the host) leave the GPU
        opt = phases["optimizer_step"]
        host = (opt.params_bytes + opt.grads_bytes + opt.optimizer_states_bytes) * cluster.num_gpus_per_node
        phases = {name: replace(m, params_bytes=0, grads_bytes=0, optimizer_states_bytes=0,
                                temporaries_bytes=0 if name == "optimizer_step" else m.temporaries_bytes)
                  for name, m in phases.items()}
    peak_phase = max(PHASES, key=lambda p: (phases[p].total_bytes, -PHASES.index(p)))
    peak = phases[peak_phase]
    reserved = overhead.reserved_bytes(peak.total_bytes, device)
    split = split_params(count_params(model), train)
    notes = [f"FSDP2: fully_shard per decoder layer and on the root, {cluster.num_gpus} ranks; "
             + ("parameters resharded after forward." if train.parallelism.fsdp_config.reshard_after_forward
                else "parameters kept gathered from forward to backward (no reshard).")]
    # the simulated step's own notes (a nearest-family stand-in, packing's mask ...), as estimate() gives them;
    # the same StepInputs as fsdp2_phases', so the cached simulation
    computed = sim_train(train)
    notes.extend(simulate_step(model, computed, device=device, keep_grads=False,
                               adapters=lora_adapter_paths(model, computed), cpu=cpu).notes)
    if train.parallelism.fsdp_config.replicate_degree > 1:
        notes.append(hsdp_note(train.parallelism.fsdp_config, cluster.num_gpus))
    if offload:
        notes.append("FSDP2 CPU offload: sharded parameters, gradients and optimizer states in host RAM; each "
                     "group's shards are copied to the device before its all-gather (not counted: modelled from "
                     "torch's source, validated on CPU only, where every state is host memory already).")
    if train.method is Method.QLORA:
        notes.append(sharded_note(train))
    if device == "cpu" and cpu is not None:
        notes.append(f"estimated for {cpu.describe()}.")
    return Estimate(
        model=model, train=train, cluster=cluster, num_params=split.num_params,
        num_trainable_params=split.num_trainable, per_gpu=peak, peak_phase=peak_phase, reserved_bytes=reserved,
        device_bytes=overhead.device_bytes(reserved, device, cluster.num_gpus), cpu_bytes_per_node=host,
        capacity_bytes=cluster.gpu.capacity_bytes, margin=margin, phases=phases, notes=tuple(notes), rank=rank,
    )
