"""Activation offloading in a profiled step: ``torch.autograd.graph.save_on_cpu`` around forward and loss.

The step runs torch's own ``save_on_cpu`` (what the bundle's train.py applies around the model's forward, which
computes the loss there), with ``pin_memory=True``: on a CPU-only build nothing is pinnable, so ``pack_to_cpu``
makes a plain CPU copy of every saved tensor (with ``pin_memory=False`` it would return ``tensor.cpu()``, the
same CPU tensor, and nothing would be offloaded at all). Its pack hook runs inside a ``pack`` window, so the
attribution files the copies as ``activations/offloaded`` (host RAM on a GPU) and everything else is what stays
on the device. On CPU ``unpack_from_cpu`` returns the copy itself (``.to("cpu")``): the device copy that CUDA
makes per unpacked tensor during each node's backward is not measured here (estimate/step/offload.py).
"""

from __future__ import annotations

import contextlib

from planner.profile.recording import MARKER_PREFIX

PACK_WINDOW = "pack"


def offloading(train):
    """The context the forward and the loss run in: save_on_cpu with its pack hook marked, or nothing."""
    if not train.activation_offload:
        return contextlib.nullcontext()
    import torch
    from torch.profiler import record_function

    ctx = torch.autograd.graph.save_on_cpu(pin_memory=True)
    pack = ctx.pack_hook

    def marked(tensor):
        with record_function(MARKER_PREFIX + PACK_WINDOW):
            return pack(tensor)

    ctx.pack_hook = marked
    return ctx
