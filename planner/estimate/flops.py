"""FLOPs per token of one training configuration, by pass (forward, backward, recomputation).

The count ``planner.estimate.throughput`` turns into step time: matmuls at 2 FLOPs per weight forward and 4
backward (fewer for frozen LoRA/QLoRA bases), attention scores and their weighted sum, and the recomputed
forward under checkpointing. Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.estimate.count.params import ParamCounts, ParamSplit
from planner.estimate.selective import recompute as recomputed
from planner.specs import Method, ModelSpec, TrainSpec


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token, by pass. ``total`` is what the GPU executes."""

    forward: float
    backward: float
    recompute: float
    num_matmul_params: int  # weights one token multiplies (active experts only, output head included)

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute


def _head_matmul_params(counts: ParamCounts, model: ModelSpec) -> int:
    head = counts.head
    if head is not None and head.in_features and head.out_features:
        return head.in_features * head.out_features
    return model.vocab_size * model.hidden_size


def flops_per_token(model: ModelSpec, train: TrainSpec, counts: ParamCounts, split: ParamSplit) -> FlopsPerToken:
    """Kaplan et al. 2020 (arXiv 2001.08361, Table 1) and Narayanan et al. 2021 (arXiv 2104.04473, §5.1):
    a matmul with P weights costs 2P FLOPs per token forward and 4P backward (2P for the input gradient,
    2P for the weight gradient); attention scores and their weighted sum cost 4*s*d_attn per layer forward
    (12*L*s*d_attn for training; counted without the causal half, the convention of Chowdhery et al. 2022,
    Appendix B). Embedding lookups and norms are not matmuls; the output head is (tied or not).
    Full checkpointing re-runs each decoder layer's forward once during backward; a selective policy the part
    selective.py says.
    LoRA/QLoRA: frozen weights skip their weight-gradient matmul (Hu et al. 2021), so the base costs 2P + 2P;
    the adapters cost 6 FLOPs per adapter parameter per token; modules_to_save train in full.
    """
    head = _head_matmul_params(counts, model)
    # Active parameters: routed experts count only top-k of E (ParamCounts.num_active_params).
    # Biases are additions, not multiply-adds: leave them out as Kaplan's and Narayanan's counts do.
    biases = sum(g.num_bias_params for g in counts.linears)
    non_matmul = counts.embedding + counts.norms + counts.other + counts.lm_head + biases
    layer_matmul = max(counts.num_active_params - non_matmul, 0)
    matmul = layer_matmul + head
    d_attn = model.num_heads * model.head_dim
    attn_fwd = 4.0 * model.num_layers * train.seq_len * d_attn
    adapter = split.num_adapter
    forward = 2.0 * matmul + attn_fwd + 2.0 * adapter
    if train.method is Method.FULL:
        backward = 4.0 * matmul + 2.0 * attn_fwd
    else:
        # Input gradients through every matmul (2P), weight gradients only for the adapters (4 per adapter
        # parameter) and for modules_to_save copies (2 per weight).
        backward = 2.0 * matmul + 2.0 * attn_fwd + 4.0 * adapter + 2.0 * split.num_saved
    # Full checkpointing: transformers checkpoints each decoder layer; the output head is not recomputed.
    # Selective policies re-run part of it (selective.py).
    again = recomputed(model, train, counts, layer_matmul, adapter)
    recompute = 2.0 * again.layer_matmul_params + again.attention * attn_fwd + 2.0 * again.adapter_params
    return FlopsPerToken(forward=forward, backward=backward, recompute=recompute, num_matmul_params=matmul)
