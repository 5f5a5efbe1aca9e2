"""What a checkpointing policy recomputes in backward, as shares the time model multiplies (issue 22).

- No checkpointing: nothing.
- Full checkpointing (``grad_checkpointing``; transformers' per-layer non-reentrant checkpoint, torchtitan's
  ``mode = "full"``): every decoder layer's forward once more, attention and elementwise kernels included.
- ``selective_ac = "N"`` (torchtitan ``_apply_layer_sac``, torchtune ``checkpoint_wrapper``): the forward of
  the ``floor(L / N)`` checkpointed layers (specs/selective_ac.py ``checkpointed_layers``).
- ``selective_ac = "op"`` (torchtitan ``_apply_op_sac``'s policy over torch/utils/checkpoint.py
  ``create_selective_checkpoint_contexts``): every layer's region is re-run in backward, but an op whose
  output the policy saved (MUST_SAVE) returns the cached output (``_CachedTorchDispatchMode``), so only the
  other ops execute again: the elementwise kernels of every layer, the even-numbered ``aten.mm`` of each
  layer's count, every ``aten.addmm`` (a linear with a bias: not in the save list) and eager attention's
  ``bmm``/softmax (not an SDPA kernel); SDPA kernels are saved and not re-run.

A linear on a 3-D input lowers to ``aten.mm`` without a bias and to ``aten.addmm`` with one
(torch/_decomp, aten/src/ATen/native/Linear.cpp ``linear``: ``_flatten_nd_linear`` for a bias); peft's LoRA
linear runs the base layer, then ``lora_B(lora_A(dropout(x)))`` (peft/tuners/lora/layer.py ``Linear.forward``):
three mms in that order. The layer's linears are taken in module order (the inventories list them as the
modeling file's forward calls them). Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.count.params import ParamCounts, lora_adapters
from planner.specs import AttnImpl, Method, ModelSpec, TrainSpec
from planner.specs.selective_ac import OP, checkpointed_layers


@dataclass(frozen=True)
class Recompute:
    """Shares of one forward that backward runs again. ``layers``: of the decoder layers' elementwise kernels
    (and QLoRA's dequantization); ``attention``: of the attention kernels; ``layer_matmul_params``: the
    decoder-layer matmul weights (adapters not included) one token multiplies again; ``adapter_params``: the
    LoRA adapter weights it multiplies again."""

    layers: float = 0.0
    attention: float = 0.0
    layer_matmul_params: float = 0.0
    adapter_params: float = 0.0

    @property
    def any(self) -> bool:
        return self.layers > 0


NONE = Recompute()


def layer_share(train: TrainSpec, num_layers: int) -> float:
    """The share of decoder layers whose region backward re-runs (their elementwise kernels, QLoRA's
    dequantization): 1 under full and op checkpointing, floor(L / N) / L under the layer policy."""
    if train.grad_checkpointing or train.selective_ac == OP:
        return 1.0
    if not train.selective_ac:
        return 0.0
    return len(checkpointed_layers(train.selective_ac, num_layers)) / num_layers


def attention_share(train: TrainSpec, num_layers: int) -> float:
    """The share of the attention kernels' forward that backward re-runs: under the op policy only eager
    attention's (its matmul/bmm and softmax are not saved; an SDPA kernel is)."""
    if train.selective_ac == OP:
        return 1.0 if train.attn_impl is AttnImpl.EAGER else 0.0
    return layer_share(train, num_layers)


def layer_mms(counts: ParamCounts, train: TrainSpec) -> list[tuple[str, int, bool]]:
    """One decoder layer's matmuls in call order as (aten op, weights, is a LoRA adapter): ``mm`` or ``addmm``;
    a LoRA-adapted linear adds its ``lora_A`` and ``lora_B`` mms (in x rank, rank x out) after its base."""
    adapted: dict[str, int] = {}
    if train.method is not Method.FULL:
        adapted = {a.path: a.rank for a in lora_adapters(counts, train.lora) if not a.parameter}
    out: list[tuple[str, int, bool]] = []
    for g in counts.linears:
        if ".layers.*." not in g.path and not g.path.startswith("layers.*."):
            continue
        out.append(("addmm" if g.bias else "mm", g.in_features * g.out_features, False))
        r = adapted.get(g.path)
        if r:
            out += [("mm", g.in_features * r, True), ("mm", r * g.out_features, True)]
    return out


def recompute(model: ModelSpec, train: TrainSpec, counts: ParamCounts, layer_matmul: float,
              adapter: float) -> Recompute:
    """The recomputed shares of ``train``'s policy. ``layer_matmul``/``adapter``: the decoder layers' matmul
    weights per token over all layers (adapters not included) and the adapters' (flops.py)."""
    if train.selective_ac != OP:
        share = layer_share(train, model.num_layers)
        return Recompute(share, share, share * layer_matmul, share * adapter) if share else NONE
    mms = layer_mms(counts, train)
    base_total = sum(w for _, w, lora in mms if not lora)
    adapter_total = sum(w for _, w, lora in mms if lora)
    again_base = again_adapter = count = 0
    for op, w, lora in mms:
        if op == "mm":
            count += 1
            if count % 2:  # an odd-numbered mm of the layer's region: MUST_SAVE, returned from the cache
                continue
        if lora:
            again_adapter += w
        else:
            again_base += w
    base = again_base / base_total * layer_matmul if base_total else 0.0
    adapters = again_adapter / adapter_total * adapter if adapter_total else 0.0
    return Recompute(1.0, attention_share(train, model.num_layers), base, adapters)


__all__ = ["NONE", "Recompute", "attention_share", "layer_mms", "layer_share", "recompute"]
