"""A simulated step as a function of the micro-batch: exact lines through two simulations.

Every tensor of a training step has a size linear in the micro-batch b (it appears at most once in any shape:
[b, s, h], [b, heads, s, s], [b * s, V] ...), and which tensor is allocated or freed when does not depend on
b. So every candidate peak moment of the simulated timeline (an allocation followed by a free, tape.Sim)
is a line ``A + B * b`` through its values at two micro-batches, and the peak at any b is the upper envelope
of those lines. This makes ``estimate`` cost two simulations per (model, method, sequence length, ...), not
one per micro-batch, which the recommender and the fit search rely on. (b = 1 is simulated directly: a
[1, s, h] tensor and a broadcast [1, s, h] operand have the same size there, which changes a few gradient
rules.)
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.step import late_segments

ENVELOPE_POINTS = (2, 3)


@dataclass(frozen=True)
class StepProfile:
    """Bytes of one micro-batch's forward and backward on one device (model states excluded)."""

    forward_end_bytes: int  # alive when backward starts: saved activations + what the loss keeps
    forward_end_saved_bytes: int  # part of it saved for backward by autograd (or held by checkpoints)
    forward_peak_bytes: int
    forward_peak_saved_bytes: int
    backward_peak_bytes: int  # activations left + gradients so far (kept ones) + backward scratch
    backward_peak_saved_bytes: int
    backward_peak_grads_bytes: int  # parameter gradients alive at the backward peak
    grads_bytes: int  # parameter gradients made by backward (ZeRO 0 keeps them all)
    backward_end_bytes: int  # alive right after backward (gradients, leaf gradients, the loss)
    # When gradients are reduced away as they arrive (ZeRO 2/3): the backward peak after the first parameter
    # gradient exists (buckets and the gradient partition are allocated from then on); else equal to the above.
    backward_late_peak_bytes: int
    backward_late_peak_saved_bytes: int
    backward_late_peak_grads_bytes: int  # ZeRO-2: a gradient larger than the reduce bucket, awaiting reduction
    per_layer_saved_bytes: int  # one decoder layer's saved bytes (generic layer)
    logits_bytes: int  # the [b, s, V] logits in their dtype
    notes: tuple[str, ...] = ()
    # CPU runs on oneDNN: matmul calls whose workspace the CPU kind does not list (counted as 0; cpu_kernels.py)
    unknown_matmuls: tuple = ()
    # Activation offloading (offload.py): saved tensors packed to host RAM when backward starts, as requested and
    # as the pinned host allocator takes them (0 without offloading; simulated directly, never enveloped)
    offloaded_bytes: int = 0
    offloaded_pinned_bytes: int = 0
    # FSDP2 (StepInputs.split_loss): the forward's peak inside the loss, which then is not in forward_peak_*
    forward_loss_peak_bytes: int = 0
    forward_loss_peak_saved_bytes: int = 0
    # --task dpo (posttrain_step.py): the reference forward's peak (0: none ran), part of the forward phase
    scoring_peak_bytes: int = 0
    # ZeRO-3 without contiguous gradients: the gradients of the last bucket, still in their own tensors at the end
    # of backward (tape._hold_in_bucket)
    bucket_end_grads_bytes: int = 0
    # the late backward's segments in time order (late_segments.py), each (live, saved, grads) at its peak
    backward_late_segments: tuple[tuple[int, int, int], ...] = ()
    # ZeRO-2: the late backward's sub-segments, one from each reduction of DeepSpeed's reduce bucket, in time order
    # (late_segments.flush_peaks): (segment index, gradient elements reduced before it, live, saved, grads)
    backward_late_flushes: tuple[tuple[int, int, int, int, int], ...] = ()
    # FSDP2 (split_loss): live and saved bytes as the top simulated layer's backward begins, before its
    # recomputation and the ghost layers' swap: the top decoder layer's pre-backward moment (simulate.py)
    layer_backward_entry_bytes: int = 0
    layer_backward_entry_saved_bytes: int = 0

    @property
    def activations_bytes(self) -> int:
        return self.forward_end_bytes


@dataclass(frozen=True)
class Run:
    """One simulation: its profile and every candidate peak ``(phase, live, saved, grads)``."""

    profile: StepProfile
    candidates: tuple[tuple[str, int, int, int], ...]


_FIELDS = (
    "forward_end_bytes", "forward_end_saved_bytes", "grads_bytes", "backward_end_bytes",
    "per_layer_saved_bytes", "logits_bytes", "layer_backward_entry_bytes", "layer_backward_entry_saved_bytes",
    "bucket_end_grads_bytes",
)


def _line(v0: int, v1: int, x0: int, x1: int) -> tuple[int, int]:
    slope = (v1 - v0) // (x1 - x0)
    return v0 - slope * x0, slope


def _hull(lines: list[tuple[tuple[int, int], tuple, tuple]]) -> list:
    """Upper envelope (max) of lines ``(live_line, saved_line, grads_line)`` keyed on live; x >= 0."""
    best: dict[int, tuple] = {}
    for item in lines:
        a, b = item[0]
        cur = best.get(b)
        if cur is None or a > cur[0][0]:
            best[b] = item
    ordered = [best[k] for k in sorted(best)]
    hull: list = []
    for item in ordered:
        a3, b3 = item[0]
        while len(hull) >= 2:
            (a1, b1), (a2, b2) = hull[-2][0], hull[-1][0]
            # the middle line never wins if lines 1 and 3 cross before lines 1 and 2 do
            if (a3 - a1) * (b2 - b1) >= (a2 - a1) * (b3 - b1):
                hull.pop()
            else:
                break
        hull.append(item)
    return hull


@dataclass(frozen=True)
class StepEnvelope:
    scalars: dict  # field -> (A, B)
    hulls: dict  # phase -> list of (live_line, saved_line, grads_line)
    notes: tuple[str, ...]
    # ZeRO-2: whether the simulated step keeps its reduce bucket's sub-segments (simulate.py: only with a gradient
    # larger than the bucket)
    flushes: bool = False

    @classmethod
    def from_runs(cls, r0: Run, r1: Run, points: tuple[int, int]) -> StepEnvelope:
        x0, x1 = points
        if len(r0.candidates) != len(r1.candidates):
            raise AssertionError("simulations at two micro-batches took different paths")
        scalars = {f: _line(getattr(r0.profile, f), getattr(r1.profile, f), x0, x1) for f in _FIELDS}
        per_phase: dict[str, list] = {}
        for c0, c1 in zip(r0.candidates, r1.candidates, strict=True):
            item = tuple(_line(c0[i], c1[i], x0, x1) for i in (1, 2, 3))
            per_phase.setdefault(c0[0], []).append(item)
        hulls = {phase: _hull(items) for phase, items in per_phase.items()}
        return cls(scalars=scalars, hulls=hulls, notes=r0.profile.notes,
                   flushes=bool(r0.profile.backward_late_flushes))

    def _peak(self, phase: str, b: int) -> tuple[int, int, int]:
        hull = self.hulls.get(phase)
        if not hull:
            return (0, 0, 0)
        best = max(hull, key=lambda item: item[0][0] + item[0][1] * b)
        return tuple(a + s * b for a, s in best)

    def at(self, b: int) -> StepProfile:
        v = {f: a + s * b for f, (a, s) in self.scalars.items()}
        fwd = self._peak("forward", b)
        bwd = self._peak("backward", b) if "backward" in self.hulls else (v["forward_end_bytes"],
                                                                           v["forward_end_saved_bytes"], 0)
        late_tuples = {ph: self._peak(ph, b) for ph in self.hulls}
        segments = late_segments.segment_peaks(late_tuples)
        late = max((seg for seg in segments if seg[0]), key=lambda seg: seg[0], default=bwd)
        loss = self._peak("forward_loss", b)
        return StepProfile(
            forward_loss_peak_bytes=loss[0],
            forward_loss_peak_saved_bytes=loss[1],
            backward_late_peak_bytes=late[0],
            backward_late_peak_saved_bytes=late[1],
            backward_late_peak_grads_bytes=late[2],
            backward_late_segments=segments,
            backward_late_flushes=late_segments.flush_peaks(late_tuples) if self.flushes else (),
            forward_peak_bytes=fwd[0],
            forward_peak_saved_bytes=fwd[1],
            backward_peak_bytes=bwd[0],
            backward_peak_saved_bytes=bwd[1],
            backward_peak_grads_bytes=bwd[2],
            notes=self.notes,
            **v,
        )
