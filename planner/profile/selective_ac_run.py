"""The profiled model under a selective activation checkpointing policy (``--selective-ac``, specs/selective_ac.py).

Both policies run through transformers' own per-layer checkpoint (``GradientCheckpointingLayer`` calling
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``), as full checkpointing does in workload.py:

- ``"N"``: checkpointing is enabled on every decoder layer, then switched off (the layer's
  ``gradient_checkpointing = False``) on every layer but each N-th, counted from 1 as torchtitan's
  ``_apply_layer_sac`` and torchtune's ``checkpoint_wrapper`` count.
- ``"op"``: every layer is checkpointed with a ``context_fn`` that returns torch's
  ``create_selective_checkpoint_contexts`` over torchtitan's op policy (``_apply_op_sac``: a fresh count per
  region; an ``aten.mm`` output is MUST_SAVE when it is the region's odd-numbered mm, an SDPA kernel's outputs
  always; everything else PREFER_RECOMPUTE). torchtitan's list names the CUDA SDPA kernels; on CPU torch runs
  ``_scaled_dot_product_flash_attention_for_cpu``, which this policy saves as their counterpart.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from planner.specs import TrainSpec
from planner.specs.selective_ac import OP, checkpointed_layers


def _sdpa_ops() -> frozenset:
    aten = torch.ops.aten
    names = ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def op_policy_context():
    """One region's selective-checkpoint contexts (called by torch.utils.checkpoint for every region)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    sdpa = _sdpa_ops()
    mm = torch.ops.aten.mm.default
    meta: dict[str, int] = defaultdict(int)

    def policy(ctx, func, *args, **kwargs):
        key = "recompute_mm_count" if ctx.is_recompute else "forward_mm_count"
        if func == mm:
            meta[key] += 1
            save = meta[key] % 2 == 1
        else:
            save = func in sdpa
        return CheckpointPolicy.MUST_SAVE if save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def enable(model, train: TrainSpec, decoder_layers) -> None:
    """Checkpoint ``model``'s decoder layers (``decoder_layers``: workload.checkpointed_layers) as ``train``'s
    selective policy says."""
    kwargs: dict = {"use_reentrant": False}
    if train.selective_ac == OP:
        kwargs["context_fn"] = op_policy_context
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if train.selective_ac == OP:
        return
    layers = list(decoder_layers)
    keep = set(checkpointed_layers(train.selective_ac, len(layers)))
    for i, layer in enumerate(layers):
        if i not in keep:
            layer.gradient_checkpointing = False


def marks_recompute(train: TrainSpec) -> bool:
    """Whether the runner may mark each layer's recomputation as a window (runner._install_recompute_hooks):
    under the layer policy yes, as under full checkpointing; under the op policy no, because the window's
    record_function op would run in the recomputation and not in the forward, which torch's cached SAC mode
    refuses ("encountered during backward but not found in storage")."""
    return bool(train.selective_ac) and train.selective_ac != OP


__all__ = ["enable", "marks_recompute", "op_policy_context"]
