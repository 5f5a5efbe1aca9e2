"""Exact parameter counts per component, and the trainable / frozen / quantized split per method.

Counts mirror how transformers 5.x builds each family (``transformers/models/<family>/modeling_<family>.py``):
every module that owns parameters becomes a :class:`ModuleGroup` (same path pattern and shape across
layers), and the component totals, the nn.Linear groups peft and bitsandbytes see, and the largest module
(DeepSpeed's ``largest_layer_params``) are all read off those groups. Families not written here fall back
to meta-device instantiation (``planner.meta``, torch imported lazily there and only there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from planner.errors import PlannerError
from planner.estimate.count.causal import refuse_non_causal
from planner.estimate.count.inventories import analytical_counts
from planner.estimate.count.inventory import (
    COMPONENTS,
    LinearGroup,
    ModuleGroup,
    ParamCounts,
    counts_from_groups,
)
from planner.meta import meta_param_counts
from planner.specs import LoraSpec, Method, ModelSpec, TrainSpec

# the inventory's types, where the rest of planner has always imported them from
__all__ = ["COMPONENTS", "LinearGroup", "LoraAdapter", "ModuleGroup", "ParamCounts", "ParamSplit", "check_lora_dropout",
           "count_params", "counts_from_groups", "largest_trainable_tensor", "lora_adapters", "lora_params",
           "lora_target_groups", "param_wrapped", "saved_groups", "split_params"]

def count_params(model: ModelSpec) -> ParamCounts:
    """Exact counts: analytical for the known families, meta-device instantiation for the rest. A model that is
    not a causal language model (an encoder such as BERT, an encoder-decoder such as T5) is refused first: the
    meta fallback would build it as a causal LM head that nobody trains (BertLMHeadModel)."""
    return _count_params(model, model.config_json())


@lru_cache(maxsize=64)
def _count_params(model: ModelSpec, config_json: str) -> ParamCounts:
    """Cached per model: an estimate asks several times and a fit search re-estimates dozens of times (145 counts
    in one ``planner estimate`` table). ``config_json`` is in the key because ModelSpec equality ignores the raw
    config, where the family details live; the result is frozen."""
    refuse_non_causal(model)
    counts = analytical_counts(model)
    if counts is not None:
        return counts
    return meta_param_counts(model)  # imports torch, only when it is called


# ------------------------------------------------------------------------------------------ the split


@dataclass(frozen=True)
class ParamSplit:
    """What each parameter costs, by storage.

    ``num_16bit`` is the base-model parameters stored in the training dtype (bf16/fp16; fp32 for fp32
    training): all of them for full training and LoRA, all but the 4-bit linear weights for QLoRA. It does
    not include LoRA adapters (``num_adapter``: peft upcasts them to fp32 by default) nor modules_to_save
    copies (``num_saved``, extra copies in the base dtype). ``num_trainable = num_adapter + num_saved`` for
    LoRA/QLoRA, ``num_params`` for full training.
    """

    num_params: int  # base model parameters
    num_trainable: int  # parameters that get gradients and optimizer states
    num_adapter: int  # LoRA A and B parameters (part of num_trainable)
    num_quantized: int  # base weights stored in 4 bits (QLoRA)
    num_16bit: int  # base parameters stored in the compute dtype (or fp32 for fp32 training)
    num_saved: int = 0  # modules_to_save: trainable full copies of base modules (part of num_trainable)

    @property
    def num_frozen(self) -> int:
        """Base parameters without gradients (all of them for LoRA/QLoRA; peft keeps saved originals)."""
        return self.num_params - (self.num_trainable - self.num_adapter - self.num_saved)


def _matches(path: str, target: str) -> bool:
    # peft check_target_module_exists: the full module name equals the target or ends with "." + target.
    return path == target or path.endswith("." + target)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _valid_names(counts: ParamCounts, kinds: tuple[str, ...]) -> str:
    names = sorted({g.name for g in counts.modules if g.kind in kinds})
    return ", ".join(names)


def _inside_saved(path: str, modules_to_save: tuple[str, ...]) -> bool:
    # peft check_target_module_exists: adapters never go on or inside a modules_to_save module,
    # re.match(rf"(^|.*\.){m}($|\..*)", key).
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", path) for m in modules_to_save)


# peft 0.21 with transformers 5 (peft/utils/transformers_weight_conversion.py, _convert_peft_config_moe;
# transformers/conversion_mapping.py, _MODEL_TO_CONVERSION_PATTERN): for these MoE model types peft rewrites
# LoRA targets meant for transformers 4's per-expert nn.Linear modules into ``target_parameters`` on the
# fused 3-D expert tensors and the router weight. A target named like an old expert projection moves to the
# parameter list even where the name is also a real nn.Linear (dense layers, shared experts), which then get
# no adapter; targeting both halves of gate_up_proj doubles its rank (rank_pattern r * 2).
_PEFT_MOE_MAPPING: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "mixtral": ({"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
                ("w1", "w3")),
    "qwen2_moe": ({"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                   "down_proj": "down_proj"}, ("gate_proj", "up_proj")),
}
_PEFT_MOE_PATTERN = {
    **dict.fromkeys(("mixtral", "minimax", "minimax_m2"), "mixtral"),
    **dict.fromkeys(("afmoe", "beam", "cohere2_moe", "deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1",
                     "ernie4_5_moe", "exaone_moe", "flex_olmo", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa",
                     "hunyuan_v1_moe", "longcat_flash", "mellum", "olmoe", "qwen3_moe", "qwen3_next",
                     "solar_open"), "qwen2_moe"),
}
_FUSED_PARAM = "gate_up_proj"


@dataclass(frozen=True)
class LoraAdapter:
    """LoRA A and B on ``num_modules`` matrices (or 3-D expert tensors: ``num_experts`` matrices each)."""

    path: str
    in_features: int
    out_features: int
    rank: int
    num_modules: int
    num_experts: int = 1
    parameter: bool = False  # a parameter target (peft lora.ParamWrapper: MoE expert tensors, router weight)

    @property
    def num_params(self) -> int:
        # Hu et al. 2021: W (d_in x d_out) gets A (d_in x r) and B (r x d_out): r * (d_in + d_out).
        # peft lora.Embedding: lora_embedding_A (r x num_embeddings), lora_embedding_B (embedding_dim x r).
        # peft lora.ParamWrapper on [E, out, in]: lora_A (r * E x in), lora_B (out x r * E).
        return self.rank * self.num_experts * (self.in_features + self.out_features) * self.num_modules


def lora_params(group: ModuleGroup, rank: int) -> int:
    return LoraAdapter(group.path, group.in_features, group.out_features, rank, group.num_modules).num_params


def _module_targets(counts: ParamCounts, targets: list[str], modules_to_save: tuple[str, ...],
                    strict: bool) -> list[ModuleGroup]:
    chosen: list[ModuleGroup] = []
    for target in targets:
        named = [g for g in counts.modules if _matches(g.path, target)]
        hits = [g for g in named if not _inside_saved(g.path, modules_to_save)]
        adaptable = [g for g in hits if g.kind in ("linear", "embedding")]
        if not adaptable and any(g.kind in ("linear", "embedding") for g in named):
            continue  # only modules inside modules_to_save: peft skips them (and refuses if nothing is left)
        if not adaptable and strict:
            valid = _valid_names(counts, ("linear", "embedding"))
            what = "matches only modules LoRA cannot adapt" if hits else "matches no module of this model"
            raise PlannerError(f"LoRA target {target!r} {what}; valid targets: all-linear, {valid}.")
        chosen += [g for g in adaptable if g not in chosen]
    return chosen


def lora_target_groups(counts: ParamCounts, targets: tuple[str, ...],
                       modules_to_save: tuple[str, ...] = ()) -> list[ModuleGroup]:
    """The modules LoRA adapts (not counting peft's MoE parameter targets), with peft's target semantics.

    ``all-linear`` (peft ``_maybe_include_all_linear_layers``): every nn.Linear and Conv1D except the output
    layer. A list: modules whose name equals a target or ends with ``.target``; peft can adapt linears and
    embeddings; a target matching nothing, or only modules peft cannot adapt, is an error. Modules inside a
    ``modules_to_save`` module get no adapter.
    """
    return [g for g in _all_targets(counts, targets, modules_to_save, rank=1) if isinstance(g, ModuleGroup)]


def _all_targets(counts: ParamCounts, targets: tuple[str, ...], modules_to_save: tuple[str, ...],
                 rank: int) -> list[ModuleGroup | LoraAdapter]:
    all_linear = "all-linear" in targets
    if all_linear and len(targets) > 1:
        raise PlannerError(f"LoRA targets {list(targets)!r} mix 'all-linear' with module names; give one or the other.")
    linears = [g for g in counts.modules if g.kind == "linear" and g.component != "lm_head"]
    pattern = _PEFT_MOE_PATTERN.get(counts.model_type)
    if pattern is None:
        if all_linear:
            return [g for g in linears if not _inside_saved(g.path, modules_to_save)]
        return list(_module_targets(counts, list(targets), modules_to_save, strict=True))
    mapping, fused = _PEFT_MOE_MAPPING[pattern]
    names = sorted({g.name for g in linears} | set(mapping)) if all_linear else list(targets)
    remaining, param_targets, present = [], set(), set()
    for name in names:
        old = next((o for o in mapping if name == o or name.endswith("." + o)), None)
        if old is None:
            remaining.append(name)
            continue
        param_targets.add(mapping[old])
        present |= {old} & set(fused)
    if 0 < len(present) < len(fused):
        missing = sorted(set(fused) - present)
        raise PlannerError(f"LoRA targets {sorted(present)} need {missing} too: peft fuses them into {_FUSED_PARAM}.")
    chosen: list[ModuleGroup | LoraAdapter] = list(
        _module_targets(counts, remaining, modules_to_save, strict=not all_linear))
    for target in sorted(param_targets):
        # peft BaseTuner._inject_parameters: "<module>.<param>" equal to or ending with "." + target.
        r = rank * len(fused) if target == _FUSED_PARAM and len(present) == len(fused) else rank
        hits = [
            LoraAdapter(f"{g.path}.{p}", shape[-1], shape[-2], r, g.num_modules, shape[0] if len(shape) == 3 else 1,
                        parameter=True)
            for g in counts.modules for p, shape in g.param_shapes if _matches(f"{g.path}.{p}", target)
        ]
        if not hits and not all_linear:
            raise PlannerError(f"LoRA targets {list(targets)!r} map to the MoE parameter {target!r}, which this model lacks.")
        chosen += hits
    return chosen


def lora_adapters(counts: ParamCounts, lora: LoraSpec) -> list[LoraAdapter]:
    """Every LoRA adapter peft would create for ``lora`` on this model."""
    out = []
    chosen = _all_targets(counts, lora.targets, lora.modules_to_save, lora.rank)
    if not chosen:
        # peft BaseTuner.inject_adapter: NoMatchingPeftModuleError "No modules were targeted for adaptation ...
        # You may also have only targeted modules that are marked to be saved (`modules_to_save`)."
        raise PlannerError(
            f"LoRA targets {', '.join(lora.targets)} leave nothing to adapt: every module they name is inside "
            f"--modules-to-save ({', '.join(lora.modules_to_save)}), which peft trains as a full copy and never "
            "adapts (peft refuses: 'No modules were targeted for adaptation')."
        )
    for t in chosen:
        out.append(t if isinstance(t, LoraAdapter) else
                   LoraAdapter(t.path, t.in_features, t.out_features, lora.rank, t.num_modules))
    check_lora_dropout(counts, lora, out)
    return out


def param_wrapped(counts: ParamCounts, lora: LoraSpec) -> list[LoraAdapter]:
    """The adapters peft puts on parameters rather than modules (lora.ParamWrapper): MoE expert tensors, routers."""
    return [t for t in _all_targets(counts, lora.targets, lora.modules_to_save, lora.rank)
            if isinstance(t, LoraAdapter) and t.parameter]


def check_lora_dropout(counts: ParamCounts, lora: LoraSpec, adapters: list[LoraAdapter] | None = None) -> None:
    """peft 0.21 ``lora.ParamWrapper.__init__`` (tuners/lora/layer.py) raises ``ValueError: lora.ParamWrapper
    does not work with lora_dropout != 0`` -- dropout cannot be applied to x in lora_B(lora_A(dropout(x))) when
    the adapter is folded into a parameter. ``lora_dropout`` is one value for the whole LoraConfig (there is no
    per-module pattern for it, unlike rank_pattern / alpha_pattern), so such a run needs lora_dropout 0."""
    if not lora.dropout:
        return
    wrapped = [a for a in (adapters if adapters is not None else param_wrapped(counts, lora)) if a.parameter]
    if wrapped:
        names = ", ".join(sorted({a.path.rsplit(".", 2)[-2] + "." + a.path.rsplit(".", 1)[-1] for a in wrapped}))
        raise PlannerError(
            f"peft adapts this {counts.model_type or 'MoE'} model's expert and router parameters ({names}) with "
            f"lora.ParamWrapper, which refuses lora_dropout != 0 (got {lora.dropout:g}); pass --lora-dropout 0, "
            "or target only linear layers (e.g. --lora-targets q_proj,v_proj)."
        )


def saved_groups(counts: ParamCounts, names: tuple[str, ...]) -> list[ModuleGroup]:
    """Module groups inside the modules peft's ``modules_to_save`` wraps.

    peft ``_set_trainable`` wraps every module whose full name ends with the given string (a plain
    ``str.endswith``, no dot boundary: 'norm' also wraps every 'input_layernorm'), and everything inside it.
    """
    chosen: list[ModuleGroup] = []
    for name in names:
        hits = [g for g in counts.modules if any(p.endswith(name) for p in _prefixes(g.path))]
        if not hits:
            valid = _valid_names(counts, ("linear", "embedding", "norm", "router", "experts", "other"))
            raise PlannerError(f"modules_to_save name {name!r} matches no module of this model; valid names: {valid}.")
        chosen += [g for g in hits if g not in chosen]
    return chosen


def split_params(counts: ParamCounts, train: TrainSpec) -> ParamSplit:
    num_params = counts.num_params
    if train.method is Method.FULL:
        return ParamSplit(num_params, num_params, 0, 0, num_params)
    lora = train.lora
    num_adapter = sum(a.num_params for a in lora_adapters(counts, lora))
    # peft ModulesToSaveWrapper keeps the original (frozen) and trains a deep copy: a tied lm_head's copy
    # is a full new tensor, so shared groups count here too.
    num_saved = sum(g.num_total for g in saved_groups(counts, lora.modules_to_save))
    num_quantized = 0
    if train.method is Method.QLORA:
        # transformers replace_with_bnb_linear: every nn.Linear (exact type) and Conv1D becomes Linear4bit,
        # except get_keys_to_not_convert (output embedding, tied weights); weights only, biases stay 16-bit.
        num_quantized = sum(g.num_weight_params for g in counts.linears if g.quantizable)
    return ParamSplit(
        num_params=num_params,
        num_trainable=num_adapter + num_saved,
        num_adapter=num_adapter,
        num_quantized=num_quantized,
        num_16bit=num_params - num_quantized,
        num_saved=num_saved,
    )


def largest_trainable_tensor(counts: ParamCounts, train: TrainSpec) -> int:
    """Elements of the largest trainable parameter tensor (bounds DeepSpeed's per-piece gradient-norm copy):
    the largest module for full fine-tuning; else the largest LoRA matrix or modules_to_save module."""
    if train.method is Method.FULL:
        return counts.largest_module
    lora = train.lora
    sizes = [a.rank * a.num_experts * max(a.in_features, a.out_features) for a in lora_adapters(counts, lora)]
    sizes += [g.num_params for g in saved_groups(counts, lora.modules_to_save)]
    return max(sizes, default=0)

