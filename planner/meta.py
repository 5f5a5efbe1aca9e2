"""The exact fallback: count an architecture by instantiating it on the meta device.

``AutoModelForCausalLM.from_config`` under ``torch.device("meta")`` builds every module with shapes but
no storage (seconds, no memory), so the counts are what transformers itself would allocate. This is the
only module outside ``planner/profile`` that imports torch and transformers, and it does so lazily: the
analytical counter (``planner.estimate.params``) calls it only for a model_type it does not know.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import lru_cache
from typing import Any

from planner.errors import PlannerError
from planner.estimate.params import COMPONENTS, ModuleGroup, ParamCounts
from planner.estimate.zero_partition import uneven_layer_ids
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
    from planner.estimate.params import LinearGroup  # noqa: PLC0415

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
    config: an estimate asks several times)."""
    return _meta_counts(model, model.config_json())


@lru_cache(maxsize=32)
def _meta_counts(model: ModelSpec, config_key: str) -> ParamCounts:
    return param_counts_of(build_meta_model(model))


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
