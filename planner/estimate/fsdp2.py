"""FSDP2 (torch 2.13 ``fully_shard``) per rank: what each parameter group shards, gathers and reduces.

planner wraps a model as torchtune's ``shard_model`` does (profile/fsdp2.py): one ``fully_shard`` per decoder
layer, then one on the root, whose group holds every parameter no layer owns (embeddings, final norm, output
head; a tied head shares the embedding's). All sources below are torch/distributed/fsdp/_fully_shard/ of the
installed torch:

- **Sharded parameters** (``_fsdp_param.py`` ``FSDPParam._init_sharded_param``): every parameter, frozen or not,
  is chunked on dim 0 over the N ranks of the shard mesh and padded to ``ceil(d0 / N)`` rows
  (``padded_sharded_param_size``); each rank allocates the padded shard (``_sharded_param_data``) in the
  parameter's own dtype: fp32 under planner's ``bf16-mixed`` policy (the master copy), else the model dtype.
  The registered DTensor's local tensor is a view of its unpadded rows.
- **Gradients** (``_fsdp_collectives.py`` ``foreach_reduce``): a group's reduce-scatter output is one flat
  tensor of its trainable parameters' padded shards, in ``reduce_dtype`` (``_fsdp_param.py`` ``init_dtype_attrs``
  clamps it to None when it equals ``param_dtype``); ``_to_dtype_if_needed`` casts it to the parameters' dtype
  (no copy with an fp32 reduce; a bf16 one is a buffer beside the new fp32 tensor until the cast returns,
  fsdp2_step.py's root moments) and each ``sharded_param.grad`` is a view of it: a group's gradients are one storage
  of ``sum(padded shard)`` elements in the parameters' dtype. Frozen parameters have none.
- **Optimizer states**: torch AdamW's ``exp_avg`` and ``exp_avg_sq`` are ``zeros_like`` of the DTensor, so of
  its unpadded local rows (rank 0 has the most), plus one 4-byte ``step`` tensor per parameter.
- **Unsharded parameters** (``_fsdp_param.py`` ``init_all_gather_outputs``, ``alloc_all_gather_outputs``): each
  parameter's all-gather output is ``N x padded shard`` elements in the compute dtype (``param_dtype`` under
  the policy), allocated in ``wait_for_unshard`` and freed by ``reshard`` (after forward when
  ``reshard_after_forward``, after the group's backward otherwise).
- **All-gather buffer** (``_fsdp_collectives.py`` ``foreach_all_gather``): one flat ``N x sum(padded shard)``
  buffer per group per all-gather; in forward the last group's stays until the next group's copy-out
  (``_fsdp_param_group.py`` ``wait_for_unshard``, ``comm_ctx.all_gather_state``) and the root's post-forward
  frees the last one (``_fsdp_state.py`` ``_post_forward``).
- **Reduce-scatter input** (``foreach_reduce``): a flat ``N x sum(padded trainable shard)`` buffer in the reduce
  dtype, kept (``comm_ctx.reduce_scatter_states``, at most one: ``reduce_scatter_max_input_buffers`` 1) until
  the next group's post-backward, the last one until the root's final callback.

- **QLoRA** (FSDP-QLoRA, ``bnb_4bit_quant_storage`` in the compute dtype): each 4-bit weight is a frozen
  ``[(n + 1) // 2 // itemsize, 1]`` tensor of that dtype (qlora_shard.py), sharded on that dim 0 and all-gathered
  like any parameter; its ``quant_state`` is a module attribute, whole on every rank.

Padding is exact for parameters whose dim-0 divides by N (every validation shape); otherwise the padded rows
are counted as torch allocates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from planner.estimate.count.flat_order import module_blocks
from planner.estimate.count.inventory import ModuleGroup, ParamCounts
from planner.estimate.count.params import lora_adapters
from planner.estimate.peft_dtypes import unquantized_dtype
from planner.estimate.qlora_shard import quant_storage_dtype, quant_storage_elements, quantized_shapes
from planner.estimate.quant import quantized_tensor_bytes
from planner.specs import LoraSpec, Method, PeftDtype, Precision, TrainSpec
from planner.units import dtype_bytes

# torch AdamW keeps its step counter as a 0-dim fp32 tensor per parameter (torch/optim/adamw.py -> adam.py
# ``_init_group``: torch.tensor(0.0, dtype=_get_scalar_dtype()))
STEP_COUNTER_BYTES = 4


@dataclass(frozen=True)
class Tensor:
    """One parameter: its dim-0 size, its elements, whether it trains and its storage dtype."""

    dim0: int
    numel: int
    trainable: bool
    dtype: str
    # a root parameter of a module before the decoder layers (embeddings): its gradient arrives last in backward
    # (not a tied head's embedding, whose gradient the head makes first)
    before_layers: bool = False

    def padded_shard(self, num_ranks: int) -> int:
        """``ceil(d0 / N)`` rows (``_fsdp_param.py`` padded_sharded_param_size)."""
        return math.ceil(self.dim0 / num_ranks) * (self.numel // self.dim0) if self.dim0 else 0

    def local_shard(self, num_ranks: int, rank: int) -> int:
        """The unpadded rows rank ``rank`` owns (``torch.chunk`` on dim 0): what ``zeros_like`` of it holds."""
        rows = math.ceil(self.dim0 / num_ranks)
        mine = max(0, min(rows, self.dim0 - rank * rows))
        return mine * (self.numel // self.dim0) if self.dim0 else 0


@dataclass(frozen=True)
class Group:
    """One ``fully_shard`` parameter group (a decoder layer, or the root) and how many alike groups there are."""

    tensors: tuple[Tensor, ...]
    repeats: int
    root: bool

    def shard_bytes(self, n: int, *, trainable_only: bool = False, dtype: str | None = None) -> int:
        return sum(t.padded_shard(n) * dtype_bytes(dtype or t.dtype) for t in self.tensors
                   if t.trainable or not trainable_only)

    def unsharded_bytes(self, n: int, compute_dtype: str | None) -> int:
        """The all-gather outputs: N x padded shard per parameter, in the policy's param dtype (or its own)."""
        return sum(n * t.padded_shard(n) * dtype_bytes(compute_dtype or t.dtype) for t in self.tensors)


@dataclass(frozen=True)
class Fsdp2States:
    """One rank's persistent FSDP2 states and the sizes of what it gathers and reduces, in bytes."""

    params_bytes: int
    grads_bytes: int
    optimizer_states_bytes: int
    root_unsharded_bytes: int  # the root group's all-gather outputs
    layer_unsharded_bytes: int  # one decoder layer's
    all_unsharded_bytes: int  # every group's (reshard_after_forward False: alive from forward to backward)
    layer_reduce_input_bytes: int  # one layer's reduce-scatter input (reduce dtype)
    root_reduce_input_bytes: int


def _module_tensors(g: ModuleGroup, trainable: bool, dtype: str) -> list[Tensor]:
    """The parameters one module owns, with their dim 0 (Linear [out, in], Conv1D [in, out], Embedding
    [num, dim], norms and biases 1-D; explicit shapes where the inventory has them)."""
    if g.param_shapes:
        return [Tensor(shape[0], math.prod(shape), trainable, dtype) for _, shape in g.param_shapes]
    if g.kind == "linear":
        weight = Tensor(g.in_features if g.conv1d else g.out_features, g.in_features * g.out_features, trainable,
                        dtype)
        return [weight] + ([Tensor(g.out_features, g.out_features, trainable, dtype)] if g.bias else [])
    if g.kind == "embedding":
        return [Tensor(g.in_features, g.num_params, trainable, dtype)]
    if g.kind == "norm" and g.bias:
        half = g.num_params // 2
        return [Tensor(half, half, trainable, dtype), Tensor(half, half, trainable, dtype)]
    return [Tensor(g.num_params, g.num_params, trainable, dtype)]


def storage_dtype(train: TrainSpec) -> str:
    """The sharded parameters' dtype: fp32 under the ``bf16-mixed`` policy (the master copy), else the model's."""
    return "fp32" if train.precision is Precision.BF16_MIXED else train.precision.compute_dtype


def compute_dtype(train: TrainSpec) -> str | None:
    """MixedPrecisionPolicy.param_dtype (None: each parameter all-gathers in its own dtype)."""
    return "bf16" if train.precision is Precision.BF16_MIXED else None


def _quantized_tensors(g: ModuleGroup, storage: str, base_dtype: str) -> list[Tensor]:
    """A QLoRA base linear under FSDP2: bitsandbytes' packed weight ``[(n + 1) // 2 // itemsize, 1]`` in its storage
    dtype (qlora_shard.py), frozen, sharded on that dim 0 like any parameter; its bias in the base dtype."""
    rows = quant_storage_elements(g.in_features * g.out_features, storage)
    return [Tensor(rows, rows, False, storage)] + ([Tensor(g.out_features, g.out_features, False, base_dtype)]
                                                   if g.bias else [])


def _is_quantized(g: ModuleGroup) -> bool:
    # transformers' replace_with_bnb_linear: every quantizable linear but the output head (quant.py)
    return g.kind == "linear" and g.quantizable and g.component != "lm_head"


@lru_cache(maxsize=64)
def groups(counts: ParamCounts, num_layers: int, method: Method, lora: LoraSpec, adapter_dtype: str,
           base_dtype: str, quant_storage: str | None = None) -> tuple[Group, ...]:
    """The root group and the decoder-layer groups (alike layers as one group with repeats). ``quant_storage``:
    QLoRA's packed 4-bit weights' dtype (None: no 4-bit base)."""
    adapters: dict[str, list] = {}
    if method is not Method.FULL:
        for a in lora_adapters(counts, lora):
            adapters.setdefault(a.path, []).append(a)
    full = method is Method.FULL
    # a tied output head's gradient is the token embedding's, made by the head's backward, first
    tied = any(g.shared for g in counts.modules)
    root: list[Tensor] = []
    layers: list[Group] = []
    for mods, reps in module_blocks(counts, num_layers):
        before = not layers
        tensors: list[Tensor] = []
        for g in mods:
            if g.shared:  # a tied head: the embedding's parameter, in the root group once
                continue
            own = (_quantized_tensors(g, quant_storage, base_dtype) if quant_storage and _is_quantized(g)
                   else _module_tensors(g, full, base_dtype))
            tensors += [replace(t, before_layers=before and not (tied and g.component == "embedding"))
                        for t in own]
            for path in [g.path] + [f"{g.path}.{name}" for name, _ in g.param_shapes]:
                for a in adapters.get(path, ()):
                    r = a.rank * a.num_experts
                    # peft lora.Linear: lora_A [r, in], lora_B [out, r]
                    tensors += [Tensor(r, r * a.in_features, True, adapter_dtype, before_layers=before),
                                Tensor(a.out_features, a.out_features * r, True, adapter_dtype,
                                       before_layers=before)]
        if any("*" in g.path for g in mods):
            layers.append(Group(tuple(tensors), reps, root=False))
        else:
            root += tensors
    return (Group(tuple(root), 1, root=True), *layers)


def fsdp2_groups(counts: ParamCounts, train: TrainSpec, num_layers: int) -> tuple[Group, ...]:
    if train.method is Method.QLORA:
        # FSDP-QLoRA: the model loaded in the compute dtype, the 4-bit weights stored in it; the unquantized
        # parameters in fp32 after peft's prepare_model_for_kbit_training, else in the compute dtype (peft_dtypes.py)
        base = unquantized_dtype(train)
        adapter = "fp32" if train.lora_dtype is PeftDtype.FP32 else train.precision.compute_dtype
        return groups(counts, num_layers, train.method, train.lora, adapter, base, quant_storage_dtype(train))
    base = storage_dtype(train)
    adapter = "fp32" if train.lora_dtype is PeftDtype.FP32 else base
    return groups(counts, num_layers, train.method, train.lora, adapter, base)


def fsdp2_states(counts: ParamCounts, train: TrainSpec, num_layers: int, num_ranks: int,
                 rank: int = 0) -> Fsdp2States:
    """Rank ``rank``'s sharded parameters, gradients (after the reduce-scatter) and AdamW states, and the sizes
    of the group buffers the step allocates (module docstring)."""
    n = num_ranks
    gs = fsdp2_groups(counts, train, num_layers)
    reduce = train.parallelism.fsdp_config.reduce_dtype
    cdt = compute_dtype(train)
    params = sum(g.repeats * g.shard_bytes(n) for g in gs)
    if train.method is Method.QLORA:
        # each Linear4bit keeps its quant_state (absmax, code, ...) as a module attribute, not a parameter:
        # fully_shard leaves it whole on every rank (bitsandbytes fix_4bit_weight_quant_state_from_module
        # re-attaches it to the gathered weight at each forward)
        params += sum(m * quantized_tensor_bytes(numel, train.quant).state_bytes for numel, m in quantized_shapes(counts))
    grads = sum(g.repeats * g.shard_bytes(n, trainable_only=True) for g in gs)
    opt = sum(g.repeats * (2 * t.local_shard(n, rank) * dtype_bytes(t.dtype) + STEP_COUNTER_BYTES)
              for g in gs for t in g.tensors if t.trainable)

    def reduce_input(g: Group) -> int:
        return sum(n * t.padded_shard(n) * dtype_bytes(reduce or cdt or t.dtype) for t in g.tensors if t.trainable)

    root, layer = gs[0], (gs[1] if len(gs) > 1 else Group((), 0, root=False))
    return Fsdp2States(
        params_bytes=params,
        grads_bytes=grads,
        optimizer_states_bytes=opt,
        root_unsharded_bytes=root.unsharded_bytes(n, cdt),
        layer_unsharded_bytes=layer.unsharded_bytes(n, cdt),
        all_unsharded_bytes=sum(g.repeats * g.unsharded_bytes(n, cdt) for g in gs),
        layer_reduce_input_bytes=reduce_input(layer),
        root_reduce_input_bytes=reduce_input(root),
    )
