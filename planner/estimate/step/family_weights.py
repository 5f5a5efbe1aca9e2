"""The simulated weights of one family: which are trainable, their dtypes, LoRA adapters and 4-bit bases.

``FamilyWeights`` builds the embedding, the output head, the final norm and (up to three) decoder layers' weights
as the family's transformers module and peft hold them, and sums the parameter gradients a step keeps
(``total_grad_bytes``). ``family_layers.Family`` writes the forward on them.
"""

from __future__ import annotations

from planner import family_config
from planner.estimate.step import moe, nearest
from planner.estimate.step.layers import Ctx, Linear
from planner.estimate.step.tape import Param
from planner.specs import Method, ModelSpec
from planner.units import dtype_bytes

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "phi3", "deepseek_v2", "qwen2_moe", "qwen3_moe", "mixtral")
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2")
GELU_TANH = ("gelu_pytorch_tanh", "gelu_new_python")


class FamilyWeights:
    """The weights a ``Family`` writes its layers on (up to three layers; later ones repeat the last)."""

    def __init__(self, model: ModelSpec, ctx: Ctx, method: Method, adapters: tuple[tuple[str, int], ...],
                 modules_to_save: tuple[str, ...]) -> None:
        self.model = model
        self.cfg = model.config or {}
        self.ctx = ctx
        self.method = method
        # (module or parameter path, rank) of every LoRA adapter (planner.estimate.count.params.lora_adapters)
        self.adapters = adapters
        self.notes: list[str] = []
        # an unknown family: the nearest validated layer (nearest.py), None when it keeps the llama layer as is
        self.arch = nearest_arch(model)
        self.kind = family_kind(model)
        full = method is Method.FULL
        self.full = full
        save = set(modules_to_save)
        emb_names = ("embed_tokens", "wte") + ((self._role_leaf("embedding"),) if self.arch else ())
        emb_trainable = full or bool(save & set(emb_names))
        self.embed_w = Param((model.vocab_size, model.hidden_size), ctx.dtype, emb_trainable)
        tied = self.arch.tied if self.arch else model.tie_word_embeddings
        head_trainable = full or "lm_head" in save or (tied and emb_trainable)
        # peft adapts the output layer like any linear (lora.Linear) and an embedding with lora.Embedding
        self.lm_head = Linear(model.hidden_size, model.vocab_size, ctx.dtype, head_trainable,
                              lora_rank=0 if full else self._rank("lm_head", *self._role("lm_head")),
                              adapter_dtype=ctx.adapter_dtype)
        self.embed_lora = self._embedding_adapter(emb_names, model.vocab_size)
        self.wpe_lora = self._embedding_adapter(("wpe",), model.max_position_embeddings) if self.kind == "gpt2" else None
        if tied:
            self.lm_head.w = self.embed_w  # one parameter: its gradient accumulates from both uses
        self.final_norm_w = Param((model.hidden_size,), ctx.dtype, full)
        self.final_norm_b = Param((model.hidden_size,), ctx.dtype, full)
        self.layer_weights = [self._layer_weights(i) for i in range(min(model.num_layers, 3))]
        self.layer_grad_bytes = _grad_bytes(self.layer_weights[min(1, len(self.layer_weights) - 1)])
        self.layer_grad_numel = sum(p.numel for v in self.layer_weights[min(1, len(self.layer_weights) - 1)].values()
                                    for p in _params_of(v) if p.trainable)

    def weigh_every_layer(self, num_layers: int) -> None:
        """Weights of their own for every layer, when the step simulates each (selective_layers.py): each
        layer's gradients are then new tensors, not accumulated into the three simulated layers' ones."""
        self.layer_weights += [self._layer_weights(i) for i in range(len(self.layer_weights), num_layers)]

    # ------------------------------------------------------------ weights

    def _rank(self, *suffixes: str) -> int:
        """The LoRA rank of the module (or parameter) whose path ends with one of ``suffixes`` (0: not adapted)."""
        for suffix in suffixes:
            for path, rank in self.adapters:
                if path.endswith("." + suffix) or path == suffix:
                    return rank
        return 0

    def _role(self, role: str) -> tuple[str, ...]:
        """The module path an unknown family's ``role`` (q, k, v, o, qkv, gate, up, down, ...) stands for."""
        path = self.arch.path(role) if self.arch else ""
        return (path,) if path else ()

    def _role_leaf(self, role: str) -> str:
        return self._role(role)[0].rsplit(".", 1)[-1] if self._role(role) else ""

    def _embedding_adapter(self, suffixes: tuple[str, ...], num: int) -> tuple[Param, Param] | None:
        """peft lora.Embedding on the embedding named by one of ``suffixes``: lora_embedding_A [r, num] and
        lora_embedding_B [dim, r] in the adapter dtype, or None."""
        rank = 0 if self.full else self._rank(*suffixes)
        if not rank:
            return None
        dtype = self.ctx.adapter_dtype
        return Param((rank, num), dtype, True), Param((self.model.hidden_size, rank), dtype, True)

    def _lin(self, suffix: str | tuple[str, ...], d_in: int, d_out: int, bias: bool = False) -> Linear:
        names = (suffix,) if isinstance(suffix, str) else suffix
        return Linear(d_in, d_out, self.ctx.dtype, self.full, bias=bias and True,
                      lora_rank=0 if self.full else self._rank(*names), adapter_dtype=self.ctx.adapter_dtype,
                      quant=self.ctx.quantized, f_linear=self.kind != "gpt2")

    def _norm(self) -> Param:
        return Param((self.model.hidden_size,), self.ctx.dtype, self.full)

    def _layer_weights(self, i: int) -> dict:
        m, c = self.model, self.cfg
        h, a, kv, d = m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim
        if self.kind == "nearest":
            return nearest.layer_weights(self, i)
        w: dict = {"ln1": self._norm(), "ln2": self._norm()}
        if self.kind == "gpt2":
            inner = m.intermediate_size
            w.update(ln1_b=self._norm(), ln2_b=self._norm(),
                     c_attn=self._lin("attn.c_attn", h, 3 * h, True),
                     c_proj=self._lin("attn.c_proj", h, h, True),
                     c_fc=self._lin("mlp.c_fc", h, inner, True), mlp_proj=self._lin("mlp.c_proj", inner, h, True))
            return w
        qkv_bias, o_bias = family_config.attention_bias(m.model_type, c)
        if self.kind == "phi3":
            w["qkv"] = self._lin("self_attn.qkv_proj", h, (a + 2 * kv) * d)
        else:
            # DeepSeek-V2's latent attention stands in as grouped-query attention (note in build_family): its
            # projections' adapters go on the stand-ins (q_a/q_b -> q, kv_a_proj_with_mqa -> k, kv_b_proj -> v)
            w.update(q=self._lin(("self_attn.q_proj", "self_attn.q_b_proj", "self_attn.q_a_proj", *self._role("q")),
                                 h, a * d, qkv_bias),
                     k=self._lin(("self_attn.k_proj", "self_attn.kv_a_proj_with_mqa", *self._role("k")), h, kv * d,
                                 qkv_bias),
                     v=self._lin(("self_attn.v_proj", "self_attn.kv_b_proj", *self._role("v")), h, kv * d, qkv_bias))
        w["o"] = self._lin(("self_attn.o_proj", *self._role("o")), a * d, h, o_bias)
        if m.model_type == "qwen3" or m.model_type == "qwen3_moe":
            w["q_norm"] = Param((d,), self.ctx.dtype, self.full)
            w["k_norm"] = Param((d,), self.ctx.dtype, self.full)
        if self.kind == "gemma2":
            w["ln3"], w["ln4"] = self._norm(), self._norm()
        if m.is_moe and _is_moe_layer(m, i):
            inter = family_config.moe_intermediate_size(m.model_type, c, m.intermediate_size)
            ex = moe.Experts(h, inter, m.num_experts, max(m.num_experts_per_tok, 1), self.ctx.dtype, self.full,
                            lora_rank=0 if self.full else self._rank("mlp.experts.down_proj"),
                            adapter_dtype=self.ctx.adapter_dtype)
            ex.weights_in_model_dtype = m.model_type in ("qwen2_moe", "qwen3_moe")
            if not self.full:
                ex.lora_gate_up = self._rank("mlp.experts.gate_up_proj")
                ex.lora_router = self._rank("mlp.gate.weight")
            w["experts"] = ex
        elif self.kind == "phi3":
            w["gate_up"] = self._lin("mlp.gate_up_proj", h, 2 * m.intermediate_size)
            w["down"] = self._lin("mlp.down_proj", m.intermediate_size, h)
        else:
            bias = family_config.mlp_bias(m.model_type, c)
            w.update(gate=self._lin(("mlp.gate_proj", *self._role("gate")), h, m.intermediate_size, bias),
                     up=self._lin(("mlp.up_proj", *self._role("up")), h, m.intermediate_size, bias),
                     down=self._lin(("mlp.down_proj", *self._role("down")), m.intermediate_size, h, bias))
        return w

    def total_grad_bytes(self, num_layers: int) -> int:
        total = self.layer_grad_bytes * max(num_layers - len(self.layer_weights), 0)
        total += sum(_grad_bytes(w) for w in self.layer_weights)
        outer = [self.embed_w, self.lm_head.w, self.final_norm_w, self.lm_head.lora_a, self.lm_head.lora_b]
        outer += list(self.embed_lora or ()) + list(self.wpe_lora or ())
        for p in {id(x): x for x in outer if x is not None}.values():
            if p.trainable:
                total += p.numel * dtype_bytes(p.dtype)
        if self.kind == "gpt2" and self.full:
            total += self.model.max_position_embeddings * self.model.hidden_size * dtype_bytes(self.ctx.dtype)
            total += self.final_norm_b.numel * dtype_bytes(self.ctx.dtype)
        if self.kind == "nearest" and self.full:
            rows = self.arch.learned_positions + (1 if self.arch.norm_bias else 0)
            total += rows * self.model.hidden_size * dtype_bytes(self.ctx.dtype)
        return total


def family_kind(model: ModelSpec) -> str:
    if model.model_type == "gpt2":
        return "gpt2"
    if model.model_type == "gemma2":
        return "gemma2"
    if model.model_type == "phi3":
        return "phi3"
    arch = nearest_arch(model)
    if arch is not None and arch.layout == "gpt2":
        return "nearest"  # GPT-2's layer with the family's adjustments (nearest.py)
    return "llama"


def nearest_arch(model: ModelSpec):
    """An unknown family's architecture as nearest.py reads it (None for the families written here)."""
    if model.model_type in LLAMA_LIKE + ("gpt2", "gemma2"):
        return None
    return nearest.describe(model)


def _is_moe_layer(model: ModelSpec, i: int) -> bool:
    c = model.config or {}
    first_dense = int(c.get("first_k_dense_replace") or 0)
    return i >= min(first_dense, 1) if first_dense else True


def _grad_bytes(w: dict) -> int:
    total = 0
    for v in w.values():
        for p in _params_of(v):
            if p.trainable:
                total += p.numel * dtype_bytes(p.dtype)
    return total


def _params_of(v) -> list[Param]:
    if isinstance(v, Param):
        return [v]
    if isinstance(v, Linear):
        return [p for p in (v.w, v.bias, v.lora_a, v.lora_b) if p is not None]
    if isinstance(v, moe.Experts):
        out = [v.router, v.gate_up, v.down]
        h, e, i = v.router.shape[1], v.num_experts, v.inter
        n = v.lora_router * (h + e) + v.lora_gate_up * e * (h + 2 * i) + v.lora_rank * e * (i + h)
        if n:
            out.append(Param((n,), v.adapter_dtype, True))
        return out
    return []
