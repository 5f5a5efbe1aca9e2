"""One decoder layer on the tape, plain or under non-reentrant activation checkpointing (``run_layer``: the
checkpoint frame, the recomputation at the first unpack with early stop), and the backward hooks the simulated
step chains on nodes (``chain_hook``; ``ghost_swap_hook``: the ghost layers' activations swapped for their
gradients before layer 1's backward).
"""

from __future__ import annotations

from planner.estimate.step import autocast, selective_layers
from planner.estimate.step import offload as packing
from planner.estimate.step.tape import Fake, Node, Sim, StopRecompute, Tape, release

# torch.utils.checkpoint (preserve_rng_state=True) stores the CPU generator state with every checkpointed
# region: torch.get_rng_state() is a 5,056-byte uint8 tensor (mt19937 state) -- also on CUDA, next to the
# device generators' seed/offset (16 bytes each).
CHECKPOINT_RNG_STATE_BYTES = 5056
CUDA_RNG_STATE_BYTES = 16


def ghost_swap_hook(sim: Sim, hooks: dict, fam, saved_bytes: int, grad_bytes: int,
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

    chain_hook(hooks, node, swap)


def chain_hook(hooks: dict, node, fn) -> None:
    prev = hooks.get(id(node))
    if prev is None:
        hooks[id(node)] = fn
    else:

        def both() -> None:
            prev()
            fn()

        hooks[id(node)] = both


def run_layer(t: Tape, fam, i: int, h: Fake, extras, ckpt: bool, hooks: dict, sac_op: bool = False) -> Fake:
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
    chain_hook(hooks, trigger, recompute)
    return out


def _detached(shape, dtype: str, st) -> Fake:
    """The recomputation runs on the saved input (its storage), which requires grad."""
    sink = Node("ckpt_input", [], lambda *_: [], 1)
    return Fake(shape, dtype, st, sink, 0)


def _note_last(t: Tape, fam, i: int, start: int) -> None:
    if len(t.sim.nodes) > start:
        fam.last_node_of_layer[i] = t.sim.nodes[-1]


__all__ = ["CHECKPOINT_RNG_STATE_BYTES", "CUDA_RNG_STATE_BYTES", "chain_hook", "ghost_swap_hook", "run_layer"]
