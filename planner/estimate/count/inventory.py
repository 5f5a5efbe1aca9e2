"""What a model is made of, as planner counts it: module groups and the totals read off them.

Every module that owns parameters becomes a :class:`ModuleGroup` (same path pattern and shape across layers);
:class:`ParamCounts` holds the groups with their component totals, the nn.Linear groups peft and bitsandbytes
see and the largest module. The analytical inventories (``count/inventories.py``) and the meta-device fallback
(``planner.meta``) both produce them; ``params.py`` counts and splits them, ``zero_partition.py`` lays them out
in DeepSpeed's flat order. This module imports nothing of planner's, so none of them import each other to
share these types.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

COMPONENTS = ("embedding", "attention", "mlp", "norms", "lm_head", "other")


@dataclass(frozen=True)
class LinearGroup:
    """``num_modules`` nn.Linear modules with the same leaf name and shape (e.g. every layer's q_proj).

    These are what peft's ``target_modules`` and bitsandbytes' ``Linear4bit`` replacement see.
    ``path`` is the module path with layer indices as ``*`` (``model.layers.*.self_attn.q_proj``);
    ``conv1d`` marks transformers' Conv1D (GPT-2), which peft and bitsandbytes treat as a linear;
    ``quantizable`` is False for nn.Linear subclasses, which transformers' bnb replacement skips.
    """

    name: str
    in_features: int
    out_features: int
    num_modules: int
    bias: bool
    path: str = ""
    conv1d: bool = False
    quantizable: bool = True

    @property
    def num_weight_params(self) -> int:
        return self.in_features * self.out_features * self.num_modules

    @property
    def num_bias_params(self) -> int:
        return self.out_features * self.num_modules if self.bias else 0


@dataclass(frozen=True)
class ModuleGroup:
    """``num_modules`` modules that own parameters, with the same path pattern and parameter shapes.

    ``kind``: linear, embedding, norm, router, experts, other. ``num_params`` is the parameters one module
    owns directly (not its children's). ``shared``: its parameters are another module's (tied lm_head), so
    totals skip it. ``in_features``/``out_features``: linears (in, out) and embeddings (num, dim).
    """

    name: str
    path: str
    kind: str
    component: str
    num_params: int
    num_modules: int
    in_features: int = 0
    out_features: int = 0
    bias: bool = False
    conv1d: bool = False
    quantizable: bool = False  # linears only: bitsandbytes' replacement would convert its type
    shared: bool = False
    # (name, shape) of each own parameter, kept for MoE experts and routers (peft targets them by parameter).
    param_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # The decoder layer of each module, where not every layer has one (dense and MoE layers mixed); empty:
    # the modules of a layered path ('*') spread evenly over the layers in order (zero_partition.py).
    layer_ids: tuple[int, ...] = ()

    @property
    def num_total(self) -> int:
        return self.num_params * self.num_modules


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    attention: int
    mlp: int  # dense MLP, or experts + router + shared experts for MoE
    norms: int
    lm_head: int  # 0 when tied to the embedding
    other: int  # anything else (position embeddings, ...)
    tied: bool
    linears: tuple[LinearGroup, ...]  # every nn.Linear / Conv1D peft and bnb see, except the output head
    largest_module: int  # parameters of the largest single module (DeepSpeed's largest_layer_params)
    modules: tuple[ModuleGroup, ...] = ()  # every module owning parameters, lm_head included
    num_routed_expert_params: int = 0  # routed (not shared) expert weights, all experts
    num_experts: int = 0  # routed experts per MoE layer
    num_experts_per_tok: int = 0
    hidden_size: int = 0
    model_type: str = ""
    source: str = "analytical"  # or "meta" (planner.meta instantiated it on the meta device)

    @property
    def num_params(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head + self.other

    @property
    def num_active_params(self) -> int:
        """Parameters one token uses: routed experts count only ``num_experts_per_tok / num_experts``."""
        if not self.num_experts:
            return self.num_params
        unused = self.num_routed_expert_params * (self.num_experts - self.num_experts_per_tok)
        return self.num_params - unused // self.num_experts

    @property
    def head(self) -> ModuleGroup | None:
        return next((m for m in self.modules if m.component == "lm_head"), None)


def counts_from_groups(groups: list[ModuleGroup], *, tied: bool, hidden_size: int, source: str, model_type: str,
                       num_routed_expert_params: int = 0, num_experts: int = 0,
                       num_experts_per_tok: int = 0) -> ParamCounts:
    """Sum groups into components; list the linears (not the output head); find the largest module."""
    totals = dict.fromkeys(COMPONENTS, 0)
    for g in groups:
        if not g.shared:
            totals[g.component] += g.num_total
    linears = tuple(
        LinearGroup(g.name, g.in_features, g.out_features, g.num_modules, g.bias, g.path, g.conv1d, g.quantizable)
        for g in groups
        if g.kind == "linear" and g.component != "lm_head"
    )
    return ParamCounts(
        **totals,
        tied=tied,
        linears=linears,
        # DeepSpeed estimate_zero3_model_states_mem_needs_all_live: largest_layer_params =
        # max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()).
        largest_module=max((g.num_params for g in groups), default=0),
        modules=tuple(groups),
        num_routed_expert_params=num_routed_expert_params,
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        hidden_size=hidden_size,
        model_type=model_type,
        source=source,
    )


# ------------------------------------------------------------------ the decoder layer of each module


def modules_per_layer(g: ModuleGroup, num_layers: int) -> int:
    """How many modules of a layered group without ``layer_ids`` each layer holds (``layer_of``)."""
    return max(g.num_modules // num_layers if num_layers and g.num_modules % num_layers == 0 else 1, 1)


def layer_of(g: ModuleGroup, i: int, num_layers: int) -> int:
    """The decoder layer of module ``i`` of a layered group (``layer_ids``, else spread evenly in order)."""
    if g.layer_ids:
        return g.layer_ids[i]
    return i // modules_per_layer(g, num_layers)


def uneven_layer_ids(g: ModuleGroup, ids: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """``ids`` as ``g.layer_ids`` holds them: empty where they are what ``layer_of`` gives without them."""
    if "*" not in g.path:
        return ()
    per = modules_per_layer(replace(g, layer_ids=()), num_layers)
    even = len(ids) == g.num_modules and all(layer == i // per for i, layer in enumerate(ids))
    return () if even else tuple(ids)
