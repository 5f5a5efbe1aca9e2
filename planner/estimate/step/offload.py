"""Activation offloading on the symbolic tape: saved tensors packed to host RAM in forward, unpacked in backward.

Follows ``torch.autograd.graph.save_on_cpu`` (torch/autograd/graph.py, torch 2.13), a ``saved_tensors_hooks``
pair around the forward (and the loss, which transformers computes inside the model's forward):

- ``pack_to_cpu`` runs for every tensor an autograd node saves, each time it is saved (a tensor saved by two
  nodes is copied twice), parameters included (F.linear's ``W.t()``, RMSNorm's ``weight``, LayerNorm's
  weight and bias, DeepSpeed ZeRO-3's gathered weight in ``LinearFunctionForZeroStage3``): with
  ``pin_memory=True`` it allocates ``torch.empty(tensor.size(), pin_memory=is_pinnable)`` and copies the tensor
  into it -- the tensor's own size (a view is copied as its shape, not its storage). The node keeps only the
  host copy, so the device tensor is freed as soon as nothing else (the forward's locals) holds it.
  ``is_pinnable`` needs an accelerator: on a CPU-only build the copy is a plain CPU allocation (and with
  ``pin_memory=False``, ``tensor.cpu()`` of a CPU tensor returns the tensor itself: no copy at all).
- ``unpack_from_cpu`` runs when the node's backward unpacks the tensor: ``tensor.to(device)`` makes a device copy
  on CUDA, freed when the node's backward returns (the generated backward functions unpack every saved
  variable first); on CPU ``.to("cpu")`` returns the host copy itself, so nothing is allocated. The host copy
  is freed when the node releases its saved variables (``retain_graph=False``).
- PyTorch's pinned host allocator rounds every request up to a power of two
  (aten/src/ATen/core/CachingHostAllocator.h), so host RAM is counted as requested and as rounded.

Gradient checkpointing (torch/utils/checkpoint.py, non-reentrant): inside a checkpointed layer the checkpoint's
own ``_checkpoint_hook`` is the innermost saved-tensors hook, so nothing there is packed; the frame's
``save_inputs(*args)`` runs before it, under ``save_on_cpu``, so each layer's positional input (the hidden
states; transformers passes the mask and rotary tables as keyword arguments bound in a ``partial``, not saved)
is packed. The recomputation unpacks it (``frame.get_inputs()``) and runs in backward, outside the offload
context: what it saves stays on the device.

torchtune's ``OffloadActivations`` (torchtune/training/_activation_offloading.py) differs: it keeps parameters,
buffers and tensors under 1 KiB on the device (no host copy, no device copy at unpack), dedupes nothing either,
and with ``use_streams`` keeps up to ``max_fwd_stash_size`` (5) packed tensors alive on the device during
forward and the previous node's unpacked tensors during backward. This module models ``save_on_cpu``.
"""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.step.sim import Fake, Node, Param, Sim, Storage, tensor_bytes

# The pinned host allocator's rounding (aten/src/ATen/core/CachingHostAllocator.h: PowerOf2Ceil)


def pinned_size(num_bytes: int) -> int:
    return 0 if num_bytes <= 0 else 1 << (num_bytes - 1).bit_length()


def saved_bytes(s) -> int:
    """Bytes ``pack_to_cpu`` copies for one saved tensor: its own shape (a view's, not its storage's)."""
    if isinstance(s, Param):
        return s.numel * tensor_bytes((), s.dtype)
    if isinstance(s, Fake):
        return tensor_bytes(s.shape, s.dtype)
    return s.nbytes


def pack(sim: Sim, node: Node, s, device: str, *, unpacked_by_node: bool = True) -> Storage | None:
    """``pack_to_cpu`` of one saved tensor: its host copy is counted; on CPU it is also a live allocation (the
    copy the node keeps, returned), on CUDA it is off the device. ``unpacked_by_node``: False for a checkpoint
    frame's input, which the node only holds (the recomputation unpacks it, not the node's backward)."""
    n = saved_bytes(s)
    sim.host += n
    sim.host_pinned += pinned_size(n)
    if node.packed is None:
        node.packed = []
    node.packed.append(n if unpacked_by_node else -n)
    if device != "cpu":
        return None
    copy = Storage(sim, n, "packed")
    copy.num_saves = 1
    sim.saved += n
    node.saved.append(copy)
    return copy


def unpack(sim: Sim, node: Node, device: str) -> list[Storage]:
    """``unpack_from_cpu`` for a node about to run its backward: a device copy of each packed tensor on CUDA
    (the caller drops them when the node's backward returns); nothing on CPU."""
    if not node.packed or device == "cpu":
        return []
    return [Storage(sim, n, "unpacked") for n in node.packed if n > 0]


def release_host(sim: Sim, node: Node) -> None:
    """The node's host copies are freed with its saved variables."""
    if node.packed:
        sim.host -= sum(abs(n) for n in node.packed)
        sim.host_pinned -= sum(pinned_size(abs(n)) for n in node.packed)
        node.packed = None


def check_modelled(model) -> None:
    if model.is_moe:
        raise PlannerError(
            f"--activation-offload is not modelled for mixture-of-experts models such as {model.name!r}: which "
            "expert weights and routing tensors their nodes save (and so copy to the host) is not written down yet."
        )


# Layer arguments besides the hidden states that transformers passes positionally to a checkpointed layer
# (models/gpt2/modeling_gpt2.py: ``block(hidden_states, cache, causal_mask, ...)``), so the checkpoint frame saves them
CHECKPOINT_POSITIONAL = {"gpt2": ("mask",)}


def pack_checkpoint_inputs(sim: Sim, node: Node, h: Fake, kwargs: dict, kind: str, device: str) -> tuple[dict, dict]:
    """A checkpointed layer's ``frame.save_inputs(*args)`` under save_on_cpu: the positional arguments (the hidden
    states, key None; GPT-2's mask) are packed, held by the region's first node; the keyword arguments stay
    referenced by transformers' ``partial``. Returns ({key: (shape, dtype, CPU copy or None)}, the kwargs left)."""
    args = {None: h} | {k: v for k in CHECKPOINT_POSITIONAL.get(kind, ())
                        if isinstance(v := kwargs.get(k), Fake) and v.st is not None}
    packed = {k: (v.shape, v.dtype, pack(sim, node, v, device, unpacked_by_node=False)) for k, v in args.items()}
    return packed, {k: v for k, v in kwargs.items() if k not in args}


def unpack_checkpoint_inputs(sim: Sim, packed: dict) -> dict:
    """``frame.get_inputs()`` at the recomputation: each packed argument as the host copy itself (CPU) or a new
    device copy (CUDA), alive as long as the recomputation (or a node it saves into) holds it."""
    return {k: Fake(shape, dtype, copy or Storage(sim, tensor_bytes(shape, dtype), "unpacked"))
            for k, (shape, dtype, copy) in packed.items()}
