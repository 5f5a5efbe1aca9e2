"""Per-tensor rules of the optimizers whose memory depends on each trainable tensor's size or shape: bitsandbytes'
8-bit and paged AdamW (``--optimizer adamw-8bit|paged-adamw|paged-adamw-8bit``) and transformers' Adafactor
(``--optimizer adafactor``), as the HF Trainer builds them (transformers/trainer_optimizer.py: ``adamw_bnb_8bit``
-> ``bnb.optim.AdamW(optim_bits=8)``, ``paged_adamw_8bit``/``paged_adamw_32bit`` the same with ``is_paged=True``,
``adafactor`` -> ``Adafactor(scale_parameter=False, relative_step=False)``, no first moment).

Each optimizer steps one tensor at a time, so its state follows each tensor and its step scratch is that of the
tensor whose update needs the most. The tensors are the trainable ones in ``model.parameters()`` order
(count/flat_order.py): the fp32 masters of the 16-bit weights under mixed precision (profile/optim.py
``MasterWeightsOptimizer``), the weights themselves in fp32 or pure bf16, peft's fp32 adapters.

No rule here applies under DeepSpeed: planner refuses these optimizers with ZeRO (specs/train.py), since DeepSpeed
would hand them its flat 1-D fp32 partitions (no factored Adafactor moment, one bitsandbytes block layout over
the partition), which planner has not profiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

from planner.estimate.count.flat_order import FlatOrder, module_blocks, trainable_blocks
from planner.estimate.count.inventory import ModuleGroup
from planner.estimate.count.params import lora_adapters, saved_groups
from planner.specs import Method, Optimizer, TrainSpec
from planner.units import dtype_bytes

# bitsandbytes 0.50.2 bitsandbytes/optim/optimizer.py ``Optimizer2State.init_state``: a tensor of fewer than
# ``min_8bit_size`` elements (default 4096, ``Optimizer2State.__init__``) keeps fp32 state1/state2; a larger one
# uint8 state1/state2 plus one fp32 absmax per block of 256 values each (``blocksize = 256``; blocks =
# ceil(n / 256)), quantised with the optimizer's two shared 256-entry fp32 maps (``fill_qmap``:
# functional.py ``create_dynamic_map`` signed and unsigned, moved once to the parameter's device).
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCKSIZE = 256
BNB_QMAP_BYTES = 2 * 256 * 4
# ``Optimizer8bit.get_state_buffer``: with ``is_paged`` a CUDA tensor of at least 1e5 elements gets its state1/
# state2 from ``F.get_paged`` (functional.py: ``cudaMallocManaged``, CUDA unified memory outside PyTorch's caching
# allocator, prefetched to the GPU before the tensor's update, ``prefetch_state``); smaller ones, and every
# absmax, come from ``torch.zeros`` on the device.
BNB_PAGED_MIN_NUMEL = 100_000
# The step of one tensor. On CUDA ``optimizer_update_8bit_blockwise`` and ``optimizer_update_32bit``
# (backends/cuda/ops.py) are one kernel each, in place: no scratch. On CPU (what `planner profile` measures)
# backends/cpu/ops.py runs them in torch ops, fp32 throughout. 8-bit (``_optimizer_update_8bit_blockwise_cpu``):
# state1 and state2 dequantised (4 + 4 bytes per element), ``grad = g.float() * gnorm_scale`` (4), ``p.data.float()``
# (4 for a 16-bit weight, the weight itself in fp32), then ``state2_fp32.sqrt() / correction2`` holds the sqrt and
# the quotient at once (4 + 4): 20 bytes per element at most for an fp32 weight, 24 for a 16-bit one (the later
# requantisation adds 1 byte + absmax to 16/20). 32-bit (``_optimizer_update_32bit_cpu``, tensors under
# min_8bit_size): ``g_float`` (4), the 16-bit weight's fp32 copy (4), ``state2.sqrt()`` and ``+ eps * correction2``
# at once (4 + 4): 12 bytes per element for an fp32 weight, 16 for a 16-bit one.
BNB_CPU_8BIT_STEP_BYTES = {4: 20, 2: 24}
BNB_CPU_32BIT_STEP_BYTES = {4: 12, 2: 16}
# transformers 5.24 transformers/optimization.py ``Adafactor.step``, per tensor with an fp32 gradient: ``update =
# (grad**2) + eps`` holds grad**2 and the sum (4 + 4 bytes per element); for a factored (>= 2-D) tensor
# ``_approx_sq_grad`` builds ``torch.mul(r_factor, c_factor)`` (4) while the old update (4) and the row and column
# factors (``exp_avg_sq_row / mean``, ``exp_avg_sq_col.unsqueeze(-2).rsqrt()``: 4 bytes per row and per column)
# are alive; a 1-D tensor's ``exp_avg_sq.rsqrt()`` (4) meets the update (4); ``p_data_fp32.add_(-update)`` holds
# the update and its negation (4 + 4). A 16-bit weight first gets ``grad.float()`` and ``p.float()`` (4 + 4),
# alive through its update.
ADAFACTOR_STEP_COPIES = 2
ADAFACTOR_16BIT_COPIES = 2
# ``state["RMS"] = self._rms(p_data_fp32)``: a 0-d fp32 tensor per stepped tensor on its device; ``state["step"]``
# is a Python int.
ADAFACTOR_RMS_BYTES = 4

BNB_OPTIMIZERS = (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW, Optimizer.PAGED_ADAMW_8BIT)
PER_TENSOR_OPTIMIZERS = BNB_OPTIMIZERS + (Optimizer.ADAFACTOR,)


@dataclass(frozen=True)
class OptimizerMemory:
    """One rank's optimizer memory beyond the master weights, per the tensors it steps."""

    state_bytes: int  # every state tensor (moments, absmax, maps, RMS), resident
    paged_bytes: int  # part of state_bytes in CUDA unified memory (paged optimizers): may spill to host RAM
    largest_paged_bytes: int  # the largest one tensor's paged states: on the GPU during that tensor's update
    step_bytes: int  # scratch of the tensor whose update needs the most


def applies(train: TrainSpec) -> bool:
    return train.optimizer in PER_TENSOR_OPTIMIZERS


def optimizer_memory(order: FlatOrder, train: TrainSpec, device: str) -> OptimizerMemory:
    """The rule for ``train.optimizer`` over the trainable tensors of ``order`` (cached: pure in its inputs)."""
    return _memory(order, train.optimizer, _stepped_bytes(train), device)


def _stepped_bytes(train: TrainSpec) -> int:
    """Bytes per element of the tensors the optimizer steps: fp32 masters under mixed precision and peft's fp32
    adapters on a 16-bit base; the weights themselves otherwise (specs: no DeepSpeed here)."""
    if train.precision.has_master_weights or train.method is not Method.FULL:
        return 4
    return dtype_bytes(train.precision.compute_dtype)


@lru_cache(maxsize=256)
def _memory(order: FlatOrder, optimizer: Optimizer, elem: int, device: str) -> OptimizerMemory:
    if optimizer is Optimizer.ADAFACTOR:
        return adafactor_memory(trainable_shapes(order), elem)
    return bnb_memory(trainable_blocks(order), optimizer, elem, device)


def bnb_memory(blocks, optimizer: Optimizer, elem: int, device: str) -> OptimizerMemory:
    """bitsandbytes' AdamW over ``blocks`` of (tensor sizes, repeats); ``elem``: bytes per element of the
    stepped tensors."""
    eight_bit = optimizer is not Optimizer.PAGED_ADAMW
    paged = optimizer is not Optimizer.ADAMW_8BIT and device == "cuda"
    state = paged_bytes = largest_paged = step = 0
    any_8bit = False
    for block, reps in blocks:
        for n in block:
            quantised = eight_bit and n >= BNB_MIN_8BIT_SIZE
            any_8bit |= quantised
            moments = 2 * n * (1 if quantised else 4)
            absmax = 2 * 4 * -(-n // BNB_BLOCKSIZE) if quantised else 0
            state += reps * (moments + absmax)
            if paged and n >= BNB_PAGED_MIN_NUMEL:
                paged_bytes += reps * moments
                largest_paged = max(largest_paged, moments)
            if device == "cpu":
                per = (BNB_CPU_8BIT_STEP_BYTES if quantised else BNB_CPU_32BIT_STEP_BYTES)[elem]
                step = max(step, per * n)
    return OptimizerMemory(state + (BNB_QMAP_BYTES if any_8bit else 0), paged_bytes, largest_paged, step)


def adafactor_memory(blocks, elem: int) -> OptimizerMemory:
    """transformers' Adafactor over ``blocks`` of (tensor shapes, repeats); ``elem`` as in bnb_memory."""
    state = step = 0
    for shapes, reps in blocks:
        for shape in shapes:
            n = _numel(shape)
            if len(shape) >= 2:  # Adafactor._get_options: factored = len(grad_shape) >= 2
                rows, cols = n // shape[-1], n // shape[-2]  # shape[:-1] and shape[:-2] + shape[-1:]
                vectors = 4 * (rows + cols)
                peak = ADAFACTOR_STEP_COPIES * 4 * n + vectors
            else:
                vectors = 4 * n  # exp_avg_sq, fp32 like the gradient it is made from
                peak = ADAFACTOR_STEP_COPIES * 4 * n
            if elem != 4:
                peak += ADAFACTOR_16BIT_COPIES * 4 * n
            state += reps * (vectors + ADAFACTOR_RMS_BYTES)
            step = max(step, peak)
    return OptimizerMemory(state, 0, 0, step)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _module_shapes(g: ModuleGroup) -> tuple[tuple[int, ...], ...]:
    """One module's own parameter shapes in registration order (flat_order.py ``_module_numels``, with shapes):
    a linear's weight is [out, in] (transformers' Conv1D [in, out]: the same rows + columns), an embedding's
    [num, dim]; a module of another kind without recorded shapes counts as one 1-D tensor."""
    if g.param_shapes:
        return tuple(shape for _, shape in g.param_shapes)
    if g.kind == "linear":
        weight = (g.in_features, g.out_features) if g.conv1d else (g.out_features, g.in_features)
        return (weight,) + (((g.out_features,),) if g.bias else ())
    if g.kind == "embedding" and g.in_features and g.out_features:
        return ((g.in_features, g.out_features),)
    if g.kind == "norm" and g.bias:
        return ((g.num_params // 2,), (g.num_params // 2,))
    return ((g.num_params,),)


@lru_cache(maxsize=64)
def trainable_shapes(order: FlatOrder) -> tuple[tuple[tuple[tuple[int, ...], ...], int], ...]:
    """The trainable tensors' shapes as (shapes, repeats) blocks, tensor for tensor the ones of
    flat_order.py ``trainable_blocks``: full fine-tuning every parameter (a tied head owns none); LoRA peft's
    lora_A [r, in] and lora_B [out, r] (on expert tensors [r*E, in] and [out, r*E]) and the modules_to_save."""
    counts = order.counts
    if order.lora is None:
        own = {id(g): () if g.shared else _module_shapes(g) for g in counts.modules}
    else:
        adapters: dict[str, list] = {}
        for a in lora_adapters(counts, order.lora):
            adapters.setdefault(a.path, []).append(a)
        saved = {g.path for g in saved_groups(counts, order.lora.modules_to_save)}
        own = {}
        for g in counts.modules:
            shapes = list(_module_shapes(g)) if g.path in saved else []
            for path in [g.path] + [f"{g.path}.{name}" for name, _ in g.param_shapes]:
                for a in adapters.get(path, ()):
                    r = a.rank * a.num_experts
                    shapes += [(r, a.in_features), (a.out_features, r)]
            own[id(g)] = tuple(shapes)
    out = []
    for mods, reps in module_blocks(counts, order.num_layers):
        block = tuple(chain.from_iterable(own[id(g)] for g in mods))
        if block:
            out.append((block, reps))
    return tuple(out)
