"""Which storages are parameters, gradients and optimizer states: by tensor identity, never by size.

``collect`` walks the known objects (the model's parameters and their ``.grad``, bitsandbytes quant states,
the optimizers' ``state`` and master copies, DeepSpeed's flat partitions) and returns the storage base
pointers per identity key. The pointer of a storage is the address the allocator reported for it, so the
replay can tag the allocation that was alive at that address when the probe ran (attribution.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

# DeepSpeed ZeRO optimizer attributes (deepspeed/runtime/zero/stage_1_and_2.py and stage3.py, v0.19) whose
# tensors hold the 16-bit parameters, gradient partitions or fp32 master partitions of this rank.
DS_PARAMS_ATTRS = (
    "bit16_groups_flat",
    "parallel_partitioned_bit16_groups",
    "fp16_partitioned_groups_flat",
    "fp16_partitioned_groups",
    "lp_param_buffer",
)
DS_GRADS_ATTRS = (
    "averaged_gradients",
    "grads_in_partition",
    "grad_partitions_flat_buffer",
    "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition",
)
DS_OPTIMIZER_ATTRS = (
    "single_partition_of_fp32_groups",
    "fp32_partitioned_groups_flat",
)


def storage_ptr(t: torch.Tensor) -> int:
    """Base address of the tensor's storage (0 for an empty storage); a DTensor's is its local shard's."""
    local = getattr(t, "_local_tensor", None)  # torch.distributed.tensor.DTensor (FSDP2's parameters, gradients)
    if isinstance(local, torch.Tensor):
        t = local
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return 0
    return storage.data_ptr() if storage.nbytes() else 0


def iter_tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors inside nested lists, tuples, dicts and sets (up to a small depth)."""
    if depth > 4 or obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from iter_tensors(v, depth + 1)


def quant_state_tensors(p: torch.Tensor) -> list[torch.Tensor]:
    """bitsandbytes Params4bit quantization constants: absmax, code, offset and the nested state's."""
    qs = getattr(p, "quant_state", None)
    out: list[torch.Tensor] = []
    while qs is not None:
        for name in ("absmax", "code", "offset"):
            v = getattr(qs, name, None)
            if isinstance(v, torch.Tensor):
                out.append(v)
        qs = getattr(qs, "state2", None)
    return out


def module_quant_states(model: torch.nn.Module) -> list[torch.Tensor]:
    """The quantization constants bitsandbytes' Linear4bit keeps on the module (``module.quant_state``, set by
    ``Params4bit._quantize``): under FSDP2 the registered parameter is a DTensor shard without its ``quant_state``
    (bitsandbytes ``fix_4bit_weight_quant_state_from_module`` re-attaches this one at each forward)."""
    out: list[torch.Tensor] = []
    for m in model.modules():
        if getattr(m, "quant_state", None) is not None:
            out += quant_state_tensors(m)
    return out


def _unique_model_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def param_storage_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct storage behind the model's parameters and quantization constants.

    Computed from the tensor objects alone (not from the recorder): the reference that the measured
    ``params`` category must equal exactly for a single-rank run.
    """
    storages: dict[int, int] = {}
    sharded, unsharded = fsdp2_params(model)
    for p in [*_unique_model_params(model), *sharded]:
        if storage_ptr(p) in unsharded:  # FSDP2's all-gathered copy, registered between forward and backward
            continue
        ds_tensor = getattr(p, "ds_tensor", None)  # ZeRO-3: the rank's partition
        for t in [p, *quant_state_tensors(p), *([ds_tensor] if ds_tensor is not None else [])]:
            ptr = storage_ptr(t)
            if ptr:
                storages[ptr] = _storage(t).nbytes()
    for q in module_quant_states(model):
        if storage_ptr(q):
            storages[storage_ptr(q)] = _storage(q).nbytes()
    return sum(storages.values())


def _storage(t: torch.Tensor):
    local = getattr(t, "_local_tensor", None)
    return (local if isinstance(local, torch.Tensor) else t).untyped_storage()


def fsdp2_params(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], set[int]]:
    """FSDP2's sharded parameters (DTensors over this rank's shard) and the all-gathered parameters alive now.

    Each ``FSDPParam`` (torch/distributed/fsdp/_fully_shard/_fsdp_param.py) keeps ``sharded_param`` whatever the
    module has registered; its ``all_gather_outputs`` (``init_all_gather_outputs``) are the unsharded storages,
    resized to 0 by ``free_unsharded_param`` when resharded (so a freed one has no pointer). Empty for a model
    without ``fully_shard``."""
    sharded: list[torch.nn.Parameter] = []
    ptrs: set[int] = set()
    for m in model.modules():
        get_state = getattr(m, "_get_fsdp_state", None)
        if get_state is None:
            continue
        group = getattr(get_state(), "_fsdp_param_group", None)
        for fsdp_param in getattr(group, "fsdp_params", ()):
            sharded.append(fsdp_param.sharded_param)
            for t in getattr(fsdp_param, "all_gather_outputs", ()):
                ptrs.add(storage_ptr(t))
    return sharded, ptrs - {0}


def _inner_optimizers(optimizer: Any) -> Iterable[torch.optim.Optimizer]:
    """The torch optimizers inside a wrapper (our master-weights wrapper, DeepSpeed's ZeRO optimizers)."""
    seen: set[int] = set()
    stack = [optimizer]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.optim.Optimizer):
            yield obj
        for attr in ("optimizer", "inner"):
            stack.append(getattr(obj, attr, None))
        stack.extend(getattr(obj, "optimizers", None) or ())  # optim.InBackwardOptimizers: one per parameter


def collect(model: torch.nn.Module, optimizer: Any) -> dict[str, list[int]]:
    """Storage pointers per identity key: params, grads, optimizer_states, temporaries/allgather."""
    keys: dict[str, set[int]] = {"params": set(), "grads": set(), "optimizer_states": set()}
    gathered: set[int] = set()
    model_param_ids = set()
    sharded, unsharded = fsdp2_params(model)  # FSDP2: DTensor shards are the parameters, gathered copies not
    gathered |= unsharded
    for p in [*_unique_model_params(model), *sharded]:
        if id(p) in model_param_ids:
            continue
        model_param_ids.add(id(p))
        ds_tensor = getattr(p, "ds_tensor", None)
        if storage_ptr(p) in unsharded:
            pass
        elif ds_tensor is not None:
            # ZeRO-3: the rank's partition is the parameter; a full p.data alive now is a gathered copy.
            keys["params"].add(storage_ptr(ds_tensor))
            if p.numel() and not getattr(p, "ds_persist", False):
                gathered.add(storage_ptr(p))
            else:
                keys["params"].add(storage_ptr(p))
        else:
            keys["params"].add(storage_ptr(p))
        for q in quant_state_tensors(p):
            keys["params"].add(storage_ptr(q))
        if p.grad is not None:
            keys["grads"].add(storage_ptr(p.grad))
    for q in module_quant_states(model):
        keys["params"].add(storage_ptr(q))
    for opt in _inner_optimizers(optimizer):
        for state in opt.state.values():
            for t in iter_tensors(state):
                keys["optimizer_states"].add(storage_ptr(t))
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in model_param_ids:  # fp32 master copies / partitions
                    keys["optimizer_states"].add(storage_ptr(p))
    _collect_deepspeed(optimizer, keys)
    out = {k: sorted(v - {0}) for k, v in keys.items()}
    out["temporaries/allgather"] = sorted(gathered - {0} - keys["params"])
    return out


def _collect_deepspeed(optimizer: Any, keys: dict[str, set[int]]) -> None:
    for attrs, key in ((DS_PARAMS_ATTRS, "params"), (DS_GRADS_ATTRS, "grads"), (DS_OPTIMIZER_ATTRS, "optimizer_states")):
        for attr in attrs:
            for t in iter_tensors(getattr(optimizer, attr, None)):
                keys[key].add(storage_ptr(t))
    # ZeRO 1/2 copy small gradients into the reduce bucket and point .grad at it (stage_1_and_2.py
    # reduce_independent_p_g_buckets_and_remove_grads): the bucket is a reduce buffer (a temporary), not a
    # gradient the step keeps.
    buckets = getattr(optimizer, "ipg_buckets", None)
    if isinstance(buckets, dict):
        for bucket in buckets.values():
            for t in iter_tensors(getattr(bucket, "buffer", None)):
                keys["grads"].discard(storage_ptr(t))


def reachable_ptrs() -> list[int]:
    """Storage pointers of every tensor Python can reach (the garbage collector's view of live objects).

    Taken when no autograd graph is alive (after an optimizer step), it lists every live tensor except those
    only C++ holds (DDP's gradient buckets, for example).
    """
    import gc

    ptrs = set()
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor):
                ptrs.add(storage_ptr(obj))
        except ReferenceError:  # a weakref.proxy whose referent is gone (isinstance reads its __class__)
            continue
        except RuntimeError:  # a tensor without storage (FakeTensor, FunctionalTensor): holds no memory
            continue
    ptrs.discard(0)
    return sorted(ptrs)
