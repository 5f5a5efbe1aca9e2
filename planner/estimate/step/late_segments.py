"""The late backward (after the first parameter gradient, ZeRO 2/3) split into segments by decoder layer.

DeepSpeed ZeRO-2 makes a rank's gradient buffer (``grads_in_partition``) when a reduced bucket first holds a
gradient of that rank's partition (deepspeed 0.19.8 stage_1_and_2.py ``copy_grads_in_partition``, called from
``reduce_ipg_grads``), not at the first gradient of backward. Gradients arrive in about the reverse of the flat
order (the output head first, the embeddings last), so a rank whose partition lies low in the flat order makes
its buffer late in backward, after the moments where most activations are still alive.

The simulation names three segments of the late backward, in time order (``SEGMENTS``): ``top`` (from the first
gradient: the output head, the top layer and the ghost layers), ``L1`` (from the start of layer 1's backward)
and ``L0`` (from layer 0's, through the embeddings). Each segment's peak is kept (``Sim.peaks`` under
``backward_late`` + its suffix); the count package says in which segment a rank's buffer appears
(zero_partition.py ``buffer_segment``), peak.py adds it from there on.

Within a segment, ZeRO-2's reduce bucket splits the time further: DeepSpeed reduces a bucket when the next
gradient's hook finds it would overflow (stage_1_and_2.py ``reduce_independent_p_g_buckets_and_remove_grads``:
``bucket.elements + param.numel() > self.reduce_bucket_size`` -> ``reduce_ipg_grads`` -> ``copy_grads_in_partition``,
which allocates the rank's buffer at the first reduced gradient of its partition). The tape starts a sub-segment
at every such reduction, named ``<segment>#<elements reduced so far>`` (``flushed``); ``flush_peaks`` lists them
in time order, so that a rank's buffer is added from the reduction that makes it (zero_partition.py
``buffer_threshold``), not from the start of the layer.

FSDP2 (``StepInputs.split_loss``) splits ``top`` once more where the top simulated layer's backward begins
(``TOP``, listed last so that the indices above stay ZeRO's; in time order it comes second): FSDP2 holds
different gathered parameters in the output head's backward (the root and the top layer's prefetched
all-gather) and in a decoder layer's (the root, the layer, and the next layer's prefetched all-gather), so
fsdp2_step.py needs the head's peak apart from the top layer's. Only with three or more simulated layers: with
two the top layer is layer 1 and ``L1`` already starts there.
"""

from __future__ import annotations

from planner.estimate.step.sim import PhasePeak

LATE = "backward_late"
# time order; the index is what zero_partition.buffer_segment returns
SEGMENTS = ("", "|L1", "|L0", "|top")
TOP = 3  # SEGMENTS' index of FSDP2's top-layer segment


def enter_top(tape) -> None:
    """FSDP2: from here on the late backward's peaks belong to the top layer's segment (module docstring)."""
    tape.late_phase = LATE + SEGMENTS[TOP]
    if tape.sim.phase.startswith(LATE):
        tape.sim.set_phase(tape.late_phase)


def install(tape, hooks: dict, fam, num_simulated_layers: int) -> None:
    """Before the first backward node of simulated layers 1 and 0 (and before the hooks already there: the
    layer's recomputation under checkpointing, the ghost layers' swap), later gradients belong to the next
    segment."""
    for index, layer in ((1, 1), (2, 0)):
        node = fam.last_node_of_layer.get(layer)
        if layer >= num_simulated_layers or node is None:
            continue

        def enter(base: str = LATE + SEGMENTS[index]) -> None:
            phase = tape.late_phase = named(base, tape.reduced_elements)
            if tape.sim.phase.startswith(LATE):
                tape.sim.set_phase(phase)

        after = hooks.get(id(node))

        def first_enter(enter=enter, after=after) -> None:
            enter()
            if after is not None:
                after()

        hooks[id(node)] = first_enter


def named(base: str, reduced: int) -> str:
    """The phase of segment ``base`` after ``reduced`` gradient elements were reduced (0: none yet)."""
    return f"{base}#{reduced}" if reduced else base


def flushed(tape, reduced: int) -> None:
    """A reduce bucket was reduced (tape.py ``_accumulate_grad``): a sub-segment of the current segment starts,
    with the live bytes of this moment (the arriving gradient is alive while the bucket is reduced)."""
    tape.reduced_elements = reduced
    tape.late_phase = named(tape.late_phase.partition("#")[0], reduced)
    if tape.sim.phase.startswith(LATE):
        tape.sim.set_phase(tape.late_phase)
        tape.sim.touch()


def _parse(phase: str) -> tuple[int, int] | None:
    """(segment index, elements reduced) of a late-backward phase name, None for another phase."""
    base, _, reduced = phase.partition("#")
    if not base.startswith(LATE) or base[len(LATE):] not in SEGMENTS:
        return None
    return SEGMENTS.index(base[len(LATE):]), int(reduced or 0)


def late_peak(peaks: dict[str, PhasePeak]) -> PhasePeak | None:
    """The highest moment of the whole late backward (every segment)."""
    found = [p for name, p in peaks.items() if _parse(name) is not None]
    return max(found, key=lambda p: p.live_bytes) if found else None


def segment_peaks(peaks: dict) -> tuple[tuple[int, int, int], ...]:
    """(live, saved, grads) of each segment in time order (the highest of its sub-segments), (0, 0, 0) for one the
    step never reached; ``peaks`` maps phase names to (live, saved, grads)."""
    out = [(0, 0, 0)] * len(SEGMENTS)
    for name, p in peaks.items():
        at = _parse(name)
        if at is not None and tuple(p)[0] > out[at[0]][0]:
            out[at[0]] = tuple(p)
    return tuple(out)


def flush_peaks(peaks: dict) -> tuple[tuple[int, int, int, int, int], ...]:
    """(segment index, elements reduced, live, saved, grads) of every sub-segment, in time order (the reduced
    elements only grow), or () when no bucket was reduced after the first gradient (not ZeRO-2)."""
    found = sorted((*at, *tuple(p)) for name, p in peaks.items() if (at := _parse(name)) is not None)
    return tuple(found) if any(f[1] for f in found) else ()
