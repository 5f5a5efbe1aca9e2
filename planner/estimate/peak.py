"""The phase model: what is alive at each moment of a steady-state training step, and which moment peaks.

A step (after step 0, when optimizer states exist; ``zero_grad(set_to_none=True)`` after every update, as
the HF Trainer and `planner profile` do) has three moments that can hold the allocated peak:

- ``forward`` (incl. the loss): weights, optimizer states, gradients only when accumulating over several
  micro-batches, and the forward's live bytes -- saved activations (category activations) plus whatever the
  running op holds (temporaries: the fp32 logits copy, attention scores being built ...). For large
  vocabularies the peak of the forward is inside the loss.
- ``backward``: the saved activations not yet consumed, the parameter gradients made so far, and the
  backward's scratch (the fp32 loss gradients of [b*s, V], each layer's recomputation under checkpointing).
  Simulated op by op (step/simulate.py), so the moment is exact: the start of the loss backward for large
  vocabularies, the end for large models with full fine-tuning.
- ``optimizer_step``: weights, gradients, optimizer states and the update's scratch (temporaries.py), plus
  ZeRO's fp32 gradient partition (sharding.py); for DeepSpeed ZeRO 1/2 the largest of the step's three
  moments (gradient norm, flattening, update; temporaries.ZeroStep).

The reported breakdown is the peak moment's, not the sum of each category's own maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.result import MemoryBreakdown
from planner.estimate.sharding import ShardedStates
from planner.estimate.step.simulate import StepProfile
from planner.estimate.temporaries import Transients
from planner.estimate.zero3_epilogue import Zero3Epilogue
from planner.specs import TrainSpec

PHASES = ("forward", "backward", "optimizer_step")


@dataclass(frozen=True)
class PhaseModel:
    phases: dict[str, MemoryBreakdown]
    peak_phase: str

    @property
    def peak(self) -> MemoryBreakdown:
        return self.phases[self.peak_phase]


def phase_breakdowns(train: TrainSpec, states: ShardedStates, step: StepProfile, transients: Transients,
                     *, overhead_bytes: int = 0, epilogue: Zero3Epilogue | None = None) -> PhaseModel:
    """Per-phase breakdowns on one GPU; ``overhead_bytes``: allocator-held non-model bytes (cuBLAS);
    ``epilogue``: ZeRO-3's reduction of its last bucket at the end of backward (zero3_epilogue.py)."""
    params, grads, opt = states.params_bytes, states.grads_bytes, states.optimizer_states_bytes
    keep = train.zero_stage < 2  # ZeRO 0/1 keep full gradients; 2/3 reduce them into partitions as they come
    accumulating = train.grad_accum > 1
    persistent = transients.persistent_bytes
    # ZeRO-3: the gathered 16-bit parameters (and the largest module's full gradient, sharding.py) in forward
    # and backward; what stays gathered for reuse (temporaries.py) covers the largest module's parameters
    gathered = max(states.gathered_bytes, transients.gathered_bytes)
    # ZeRO-3's gradient partition exists from the start; ZeRO-2's is made when the first gradient is reduced
    early_grads = grads if (train.zero_stage == 3 or accumulating) else 0

    # forward: gradients exist only between the micro-batches of an accumulation (or as ZeRO-3's buffer)
    forward = MemoryBreakdown(
        params_bytes=params,
        grads_bytes=early_grads if not keep else (grads if accumulating else 0),
        optimizer_states_bytes=opt,
        activations_bytes=step.forward_peak_saved_bytes,
        temporaries_bytes=step.forward_peak_bytes - step.forward_peak_saved_bytes + persistent
        + gathered,
        overhead_bytes=overhead_bytes,
    )

    zs = transients.zero_step
    if keep:
        # the simulated moment; its gradients are the ones made so far (or the accumulated buffers)
        bwd_other = step.backward_peak_bytes - step.backward_peak_saved_bytes - step.backward_peak_grads_bytes
        backward = MemoryBreakdown(
            params_bytes=params,
            grads_bytes=grads if accumulating else step.backward_peak_grads_bytes,
            optimizer_states_bytes=opt,
            activations_bytes=step.backward_peak_saved_bytes,
            # ZeRO-1 fills DeepSpeed's reduce bucket as the gradients of the last micro-batch arrive
            temporaries_bytes=max(bwd_other, 0) + persistent + gathered + transients.late_bytes,
            overhead_bytes=overhead_bytes,
        )
        if zs is not None:
            # ZeRO-1 at the end of backward (reduce_gradients, bucket by bucket in parameter order): the
            # rank's grads_in_partition is allocated while the gradients not yet moved into the reduce bucket
            # still exist (zero_partition.py), then the .grad tensors and the bucket are dropped.
            epilogue = MemoryBreakdown(
                params_bytes=params,
                grads_bytes=zs.epilogue_grads_bytes,
                optimizer_states_bytes=opt,
                temporaries_bytes=max(step.backward_end_bytes - step.grads_bytes, 0) + persistent
                + transients.late_bytes,
                overhead_bytes=overhead_bytes,
            )
            if epilogue.total_bytes > backward.total_bytes:
                backward = epilogue
        if transients.allreduce_flat_bytes:
            # DeepSpeed stage 0 after backward (ds_stage0.py): every gradient, beside the flat bucket being reduced
            reduce = MemoryBreakdown(
                params_bytes=params,
                grads_bytes=grads,
                optimizer_states_bytes=opt,
                temporaries_bytes=max(step.backward_end_bytes - step.grads_bytes, 0) + persistent
                + transients.allreduce_flat_bytes,
                overhead_bytes=overhead_bytes,
            )
            if reduce.total_bytes > backward.total_bytes:
                backward = reduce
    else:
        # ZeRO-2 accumulating: from the second micro-batch on, the first one's grads_in_partition is alive the whole
        # backward (deepspeed 0.19.8 stage_1_and_2.py independent_gradient_partition_epilogue keeps its param.grad
        # views in all_grad_tensors, and later micro-batches add_ into them), and copy_grads_in_partition
        # allocates the micro-batch's own buffer at its first reduction, since _release_ipg_buffers set
        # grads_in_partition to None at the previous epilogue (freed at this one, after the add_)
        held = zs.partition_grads_bytes if (zs is not None and accumulating) else 0
        early = MemoryBreakdown(
            params_bytes=params,
            grads_bytes=held or early_grads,
            optimizer_states_bytes=opt,
            activations_bytes=step.backward_peak_saved_bytes,
            temporaries_bytes=step.backward_peak_bytes - step.backward_peak_saved_bytes + persistent
            + gathered,
            overhead_bytes=overhead_bytes,
        )
        # the late backward segment by segment (step/late_segments.py): ZeRO-2's grads_in_partition (the whole
        # tensors overlapping the rank's partition, zero_partition.py) from the segment where the rank's first
        # gradient is reduced, ZeRO-3's partition throughout; and a gradient larger than the reduce bucket
        # still awaiting its reduction
        segments = step.backward_late_segments or ((step.backward_late_peak_bytes,
                                                    step.backward_late_peak_saved_bytes,
                                                    step.backward_late_peak_grads_bytes),)
        # ZeRO-2 with a rank's buffer placed by the reduction that makes it: the segments' sub-segments, one from
        # each reduction of the reduce bucket (late_segments.py), the buffer from the first that reduced more than
        # the elements after the rank's last tensor (zero_partition.buffer_threshold)
        threshold = zs.buffer_threshold if zs is not None and zs.buffer_segment else None
        flushes = step.backward_late_flushes if threshold is not None else ()
        timeline = flushes or tuple((i, 0, *seg) for i, seg in enumerate(segments))
        late = None
        for i, reduced, live, saved, awaiting in timeline:
            if not live:
                continue  # a segment the step never reached
            own = grads if zs is None else zs.partition_grads_bytes if i >= zs.buffer_segment and (
                not flushes or reduced > threshold) else 0
            moment = MemoryBreakdown(
                params_bytes=params,
                grads_bytes=own + held + awaiting,
                optimizer_states_bytes=opt,
                activations_bytes=saved,
                temporaries_bytes=live - saved - awaiting + persistent + gathered + transients.late_bytes,
                overhead_bytes=overhead_bytes,
            )
            if late is None or moment.total_bytes > late.total_bytes:
                late = moment
        backward = early if late is None or early.total_bytes >= late.total_bytes else late
        if epilogue is not None:
            # ZeRO-3 after the last gradient: no activation left, the last bucket's flat copies beside the bucket
            end = MemoryBreakdown(
                params_bytes=params,
                # without contiguous gradients the last bucket's still in their own tensors (tape._hold_in_bucket)
                grads_bytes=grads + held + step.bucket_end_grads_bytes,
                optimizer_states_bytes=opt,
                temporaries_bytes=max(step.backward_end_bytes - step.grads_bytes - step.bucket_end_grads_bytes, 0)
                + persistent
                + (gathered if epilogue.gathered_cap_bytes is None else min(gathered, epilogue.gathered_cap_bytes))
                + epilogue.copies_bytes,
                overhead_bytes=overhead_bytes,
            )
            if end.total_bytes > backward.total_bytes:
                backward = end

    if zs is not None:
        # DeepSpeed ZeRO 1/2: the norm, the flattening and the update are separate moments (temporaries.py)
        moments = [
            MemoryBreakdown(params_bytes=params, grads_bytes=zs.partition_grads_bytes, optimizer_states_bytes=opt,
                            temporaries_bytes=nbytes - zs.partition_grads_bytes + persistent,
                            overhead_bytes=overhead_bytes)
            for nbytes in (zs.norm_bytes, zs.flatten_bytes)
        ]
        for nbytes in (zs.update_bytes, zs.gather_bytes):
            moments.append(MemoryBreakdown(params_bytes=params, grads_bytes=0, optimizer_states_bytes=opt,
                                           temporaries_bytes=nbytes + persistent, overhead_bytes=overhead_bytes))
        optimizer_step = max(moments, key=lambda m: m.total_bytes)
    elif train.optimizer_in_backward:
        # every parameter was stepped in backward (tape._step_in_hook): the optimizer step is a no-op
        optimizer_step = MemoryBreakdown(params_bytes=params, grads_bytes=0, optimizer_states_bytes=opt,
                                         temporaries_bytes=persistent, overhead_bytes=overhead_bytes)
    else:
        # optimizer step: everything persistent + the update's scratch + ZeRO-3's fp32 gradient sub-group
        optimizer_step = MemoryBreakdown(
            params_bytes=params,
            grads_bytes=grads,
            optimizer_states_bytes=opt,
            temporaries_bytes=transients.step_bytes + states.step_grad_fp32_bytes + persistent,
            overhead_bytes=overhead_bytes,
        )
    phases = {"forward": forward, "backward": backward, "optimizer_step": optimizer_step}
    peak_phase = max(PHASES, key=lambda p: (phases[p].total_bytes, -PHASES.index(p)))
    return PhaseModel(phases=phases, peak_phase=peak_phase)
