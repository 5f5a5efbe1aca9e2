"""The exact fallback: count an architecture by instantiating it on the meta device.

``AutoModelForCausalLM.from_config`` under ``torch.device("meta")`` builds every module with shapes but
no storage (seconds, no memory), so the counts are what transformers itself would allocate. This is the
only module outside ``planner/profile`` that imports torch and transformers, and it does so lazily: the
analytical counter (``planner.estimate.count.params``) calls it only for a model_type it does not know.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import lru_cache
from typing import Any

from planner.errors import PlannerError
from planner.estimate.count.inventory import (
    COMPONENTS,
    LinearGroup,
    ModuleGroup,
    ParamCounts,
    uneven_layer_ids,
)
from planner.specs import ModelSpec

_INDEX = re.compile(r"\.\d+(?=\.|$)")
_LAYER = re.compile(r"\.(\d+)(?=\.|$)")  # a module's first index: its decoder layer
_ATTENTION_WORDS = ("attn", "attention")
_MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward", "expert", "moe")


def build_meta_model(model: ModelSpec) -> Any:
    """The transformers causal LM for ``model.config``, on the meta device (no weights allocated)."""
    import torch  # noqa: PLC0415 - torch stays out of `planner estimate` unless this fallback is needed
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    raw = dict(model.config)
    model_type = raw.pop("model_type", model.model_type)
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except Exception as exc:  # noqa: BLE001 - unknown type or invalid values: one sentence either way
        raise PlannerError(
            f"model type {model_type!r} of {model.name!r} is unknown to the installed transformers, so its "
            f"parameters cannot be counted ({str(exc).splitlines()[0][:120]})."
        ) from None
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any failure to build is the config's fault, said in one sentence
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise PlannerError(
            f"transformers cannot build a causal LM for model type {model_type!r} of {model.name!r}: {first}"
        ) from None


def _component(path: str, kind: str) -> str:
    if kind == "norm":
        return "norms"
    if kind in ("experts", "router"):
        return "mlp"
    lowered = path.lower()
    if any(w in lowered for w in _ATTENTION_WORDS):
        return "attention"
    if any(w in lowered for w in _MLP_WORDS):
        return "mlp"
    return "other"


def _kind(module: Any, own: list[Any], is_linear: bool) -> str:
    cls = type(module).__name__.lower()
    if is_linear:
        return "linear"
    if "embedding" in cls:
        return "embedding"
    if "norm" in cls:
        return "norm"
    if "expert" in cls and any(p.dim() == 3 for p in own):
        return "experts"
    if "router" in cls or "gate" in cls:
        return "router"
    return "other"


def param_counts_of(hf_model: Any) -> ParamCounts:
    """ParamCounts of a real (or meta) transformers model, read off its modules."""
    import torch  # noqa: PLC0415
    from transformers.pytorch_utils import Conv1D  # noqa: PLC0415

    input_emb = hf_model.get_input_embeddings()
    output_emb = hf_model.get_output_embeddings()
    seen: set[int] = set()
    totals = dict.fromkeys(COMPONENTS, 0)
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name, module in hf_model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        unique = [p for p in own if id(p) not in seen]
        seen.update(id(p) for p in own)
        is_linear = isinstance(module, (torch.nn.Linear, Conv1D))
        kind = _kind(module, own, is_linear)
        if module is output_emb:
            component = "lm_head"
        elif module is input_emb:
            component = "embedding"
        elif kind == "embedding":
            component = "other"  # position or type embeddings
        else:
            component = _component(name, kind)
        totals[component] += sum(p.numel() for p in unique)
        if is_linear and isinstance(module, Conv1D):
            d_in, d_out = module.weight.shape  # Conv1D stores (in, out)
        elif is_linear:
            d_in, d_out = module.in_features, module.out_features
        elif kind == "embedding":
            d_in, d_out = module.weight.shape  # (num_embeddings, dim)
        else:
            d_in = d_out = 0
        path = _INDEX.sub(".*", name)
        key = (path, type(module).__name__, tuple(tuple(p.shape) for p in own), not unique)
        entry = grouped.setdefault(key, {
            "name": name.rsplit(".", 1)[-1], "path": path, "kind": kind, "component": component,
            "num_params": sum(p.numel() for p in own), "num_modules": 0, "in_features": int(d_in),
            "out_features": int(d_out), "bias": isinstance(getattr(module, "bias", None), torch.nn.Parameter),
            "conv1d": isinstance(module, Conv1D),
            # transformers replace_with_bnb_linear: `isinstance(module, Conv1D) or type(module) is nn.Linear`.
            "quantizable": isinstance(module, Conv1D) or type(module) is torch.nn.Linear,
            "shared": not unique,
            "param_shapes": tuple((n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False))
            if kind in ("experts", "router") else (),
        })
        entry["num_modules"] += 1
        layer = _LAYER.search(name)
        entry.setdefault("layer_ids", []).append(int(layer.group(1)) if layer else 0)
    config = hf_model.config
    num_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    groups = []
    for g in grouped.values():
        ids = tuple(g.pop("layer_ids"))
        group = ModuleGroup(**g)
        groups.append(replace(group, layer_ids=uneven_layer_ids(group, ids, num_layers)))
    num_experts = int(
        getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
        or getattr(config, "n_routed_experts", None) or 0
    )
    routed = sum(g.num_total for g in groups if g.kind == "experts")
    return ParamCounts(
        **totals,
        tied=output_emb is not None and input_emb is not None and output_emb.weight is input_emb.weight,
        linears=tuple(
            LinearGroup(g.name, g.in_features, g.out_features, g.num_modules, g.bias, g.path, g.conv1d,
                        g.quantizable)
            for g in groups if g.kind == "linear" and g.component != "lm_head"
        ),
        # DeepSpeed's largest_layer_params: max over modules of their own (recurse=False) parameters.
        largest_module=max((g.num_params for g in groups), default=0),
        modules=tuple(groups),
        num_routed_expert_params=routed,
        num_experts=num_experts if routed else 0,
        num_experts_per_tok=int(getattr(config, "num_experts_per_tok", 0) or 0) if routed else 0,
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        model_type=str(getattr(config, "model_type", "")),
        source="meta",
    )


def meta_param_counts(model: ModelSpec) -> ParamCounts:
    """Exact counts for any architecture transformers can build, by instantiating it on the meta device (once per
    config: an estimate asks several times).

    Building costs about a millisecond per decoder layer (seconds for thousands of layers, issue 14 item 5),
    so a deep model whose layers are all alike is built at three shallow depths and its layers multiplied
    (``_extrapolate``); anything else is built whole."""
    return _meta_counts(model, model.config_json())


@lru_cache(maxsize=32)
def _meta_counts(model: ModelSpec, config_key: str) -> ParamCounts:
    depth = _probe_depth(model)
    if depth is not None and model.num_layers > depth + 2:
        shallow = [param_counts_of(build_meta_model(_with_layers(model, d))) for d in (depth, depth + 1, depth + 2)]
        # the third depth checks that two suffice: layers that differ by index show up as a mismatch
        if _extrapolate(shallow[0], shallow[1], depth, depth + 2) == shallow[2]:
            deep = _extrapolate(shallow[0], shallow[1], depth, model.num_layers)
            if deep is not None:
                return deep
    return param_counts_of(build_meta_model(model))


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Config values that are sizes, not layer indices or periods (a layer-dependent setting -- first_k_dense_replace,
# decoder_sparse_step, a sliding-window pattern -- is a small integer whose key names none of these).
_SIZE_WORDS = ("size", "dim", "head", "vocab", "position", "_id", "expert", "rank", "window", "token", "length",
               "bucket", "chunk", "group", "hidden", "intermediate", "embd", "inner", "max_", "seed", "factor")


def _probe_depth(model: ModelSpec) -> int | None:
    """The depth at which every kind of layer the config can make has appeared: one more than the largest small
    integer of the config (with transformers' class defaults) that could be a layer index or period. None where
    the config lists something per layer (its layers may all differ) or the depth would be large."""
    if not any(model.config.get(k) == model.num_layers for k in _LAYER_KEYS):
        return None
    cfg = {**config_with_defaults(model), **model.config}
    top = 1
    for key, value in cfg.items():
        if isinstance(value, (list, tuple)) and len(value) > 1:
            return None  # per-layer lists (layer_types, mlp_only_layers, ...): build whole
        if key in _LAYER_KEYS or isinstance(value, bool) or not isinstance(value, int):
            continue
        if not any(w in key.lower() for w in _SIZE_WORDS) and 0 <= value < model.num_layers:
            top = max(top, value)
    return top + 1 if top < 64 else None


def _with_layers(model: ModelSpec, depth: int) -> ModelSpec:
    cfg = {k: (depth if k in _LAYER_KEYS and v == model.num_layers else v) for k, v in model.config.items()}
    return replace(model, num_layers=depth, config=cfg)


def _extrapolate(a: ParamCounts, b: ParamCounts, depth: int, num_layers: int) -> ParamCounts | None:
    """The counts at ``num_layers`` from those at ``depth`` (``a``) and ``depth + 1`` (``b``), where every
    module group either has the same modules at both depths (outside the layers) or the same number in each
    layer; None otherwise."""
    if len(a.modules) != len(b.modules) or (a.tied, a.num_experts, a.model_type) != (b.tied, b.num_experts, b.model_type):
        return None
    groups = []
    for ga, gb in zip(a.modules, b.modules, strict=True):
        if replace(ga, num_modules=0, layer_ids=()) != replace(gb, num_modules=0, layer_ids=()):
            return None
        per = gb.num_modules - ga.num_modules
        if per == 0 and "*" not in ga.path:
            groups.append(ga)
        elif per > 0 and not ga.layer_ids and not gb.layer_ids and ga.num_modules == per * depth:
            groups.append(replace(ga, num_modules=per * num_layers))
        else:
            return None  # a group in some layers only, or an index that is not the layer
    more = num_layers - depth
    totals = {c: getattr(a, c) + more * (getattr(b, c) - getattr(a, c)) for c in COMPONENTS}
    return replace(
        a, **totals,
        linears=tuple(
            LinearGroup(g.name, g.in_features, g.out_features, g.num_modules, g.bias, g.path, g.conv1d, g.quantizable)
            for g in groups if g.kind == "linear" and g.component != "lm_head"
        ),
        modules=tuple(groups),
        num_routed_expert_params=sum(g.num_total for g in groups if g.kind == "experts"),
    )


@lru_cache(maxsize=32)
def _defaults(model_type: str, config_key: str) -> dict[str, Any]:
    from transformers import AutoConfig  # noqa: PLC0415

    raw = {k: v for k, v in json.loads(config_key).items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **raw).to_dict()
    except Exception:  # noqa: BLE001 - build_meta_model reports an unbuildable config in one sentence
        return {}


def config_with_defaults(model: ModelSpec) -> dict[str, Any]:
    """The config as transformers' config class completes it: every attribute with its class default
    (``use_parallel_residual``, ``rope_parameters``, ``hidden_act``, ...) for keys config.json leaves out."""
    return dict(_defaults(model.model_type, model.config_json()))
