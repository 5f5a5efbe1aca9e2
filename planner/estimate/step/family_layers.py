"""Per-family decoder layers and embeddings on the symbolic tape (see step/simulate.py for the sources).

A ``Family`` holds the simulated weights (``family_weights.FamilyWeights``: which are trainable, their dtypes,
LoRA adapters, 4-bit bases) and writes the embedding, one decoder layer and the final norm the way the family's
transformers module does; ``build_family`` makes one for a model, a method and a micro-batch.
"""

from __future__ import annotations

from planner.estimate.step import autocast, moe, nearest, ops
from planner.estimate.step import layers as ly
from planner.estimate.step import packed as packing
from planner.estimate.step.family_weights import LLAMA_LIKE, FamilyWeights, family_kind, nearest_arch
from planner.estimate.step.layers import Ctx
from planner.estimate.step.tape import Fake, Node, Param, Tape
from planner.specs import Method, ModelSpec, Precision


class Family(FamilyWeights):
    def __init__(self, model: ModelSpec, ctx: Ctx, method: Method, adapters: tuple[tuple[str, int], ...],
                 modules_to_save: tuple[str, ...], *, input_requires_grad: bool = False) -> None:
        super().__init__(model, ctx, method, adapters, modules_to_save)
        self.last_node_of_layer: dict[int, Node] = {}
        # the embedding's output requires grad even when frozen (checkpointing: enable_input_require_grads())
        self.input_requires_grad = input_requires_grad
        self.leaf_grads: list = []

    # ------------------------------------------------------------ embedding and extras

    def embed(self, t: Tape, ids: Fake):
        """Returns (hidden, extras, held): ``held`` are locals the base model keeps until it returns."""
        c, ctx = self.ctx, self.ctx
        n_shape = (c.b, c.s, self.model.hidden_size)
        emb = t.op("embedding", [self.embed_w], [(n_shape, self.embed_w.dtype)], [ids])[0]
        if self.kind == "gemma2":
            emb = ops.mul_scalar(t, emb)  # Gemma2TextScaledWordEmbedding: * embed_scale (a 0-dim buffer)
        if self.embed_lora is not None:
            emb = ly.lora_embedding(t, ctx, ids, emb, *self.embed_lora, scaled=self.kind == "gemma2")
        if self.input_requires_grad and emb.node is None:
            # enable_input_require_grads(): the frozen embedding's output becomes a leaf that requires grad;
            # AccumulateGrad holds the leaf, and its .grad, until the graph is freed after backward.
            emb = Fake(emb.shape, emb.dtype, emb.st, Node("input_grad_leaf", [], self._keep_leaf_grad, 1), 0)
            hold = Node("leaf_hold", [], self._keep_leaf_grad, 1)
            t.keep(hold, [emb])
            self.leaf_grads.append(hold)
        held = [emb]
        if self.kind == "nearest" and self.arch.learned_positions:
            wpe = Param((self.arch.learned_positions, self.model.hidden_size), c.dtype, self.full)
            pos = t.op("embedding", [wpe], [((1, c.s, self.model.hidden_size), c.dtype)], _position_ids(t, c.s))[0]
            held.append(pos)
            emb = ops.add(t, emb, pos)
        if self.kind == "nearest":
            emb = ops.dropout(t, emb, ctx.resid_dropout, ctx.device)
        if self.kind == "gpt2":
            wpe = Param((self.model.max_position_embeddings, self.model.hidden_size), c.dtype, self.full)
            pos = t.op("embedding", [wpe], [((1, c.s, self.model.hidden_size), c.dtype)], _position_ids(t, c.s))[0]
            if self.wpe_lora is not None:
                position_ids = t.new((1, c.s), "int64")
                pos = ly.lora_embedding(t, ctx, position_ids, pos, *self.wpe_lora)
                del position_ids
            held.append(pos)
            emb = ops.add(t, emb, pos)
        if self.kind == "gpt2":
            emb = ops.dropout(t, emb, _gpt2_dropout(self, "embd_pdrop"), ctx.device)
        # the model's own arange; --packing: the collator's, made with the batch (counted as inputs, like ids)
        extras = {"position_ids": Fake((1, c.s), "int64", None) if c.packed else t.new((1, c.s), "int64")}
        if self.kind != "gpt2" and (self.kind != "nearest" or self.arch.rotary):
            # rotary cos/sin [1, s, head_dim] in the activation dtype, computed once per forward. No autograd
            # node in any release: 5.23 runs RotaryEmbedding.forward under @torch.no_grad(), 5.24 without it,
            # but from position_ids and the inv_freq buffer, which need no gradient, so nothing is recorded.
            extras["cos"] = t.new((1, 1, c.s, c.head_dim), c.dtype)
            extras["sin"] = t.new((1, 1, c.s, c.head_dim), c.dtype)
        extras["mask"] = self._mask(t)
        if self.kind == "gemma2":
            # Gemma2Model builds both mappings (full and sliding-window causal masks) for eager attention
            extras["mask_sliding"] = self._mask(t)
        return emb, extras, held

    def _mask(self, t: Tape):
        """Eager attention gets a materialised [b, 1, s, s] additive mask in the activation dtype
        (masking_utils.eager_mask: torch.where over the boolean mask); SDPA and flash get none (is_causal)."""
        c = self.ctx
        if c.packed:
            return packing.build_mask(t, c.s, c.attn, c.dtype)
        if c.attn != "eager":
            return None
        boolean = t.new((1, 1, c.s, c.s), "bool")
        mask = t.new((c.b, 1, c.s, c.s), c.dtype)
        del boolean
        return mask

    def _keep_leaf_grad(self, t: Tape, node, grads_out) -> list:
        self.leaf_grads.extend(g for g in grads_out if g is not None)
        return []

    # ------------------------------------------------------------ layers

    def layer(self, t: Tape, i: int, x: Fake, extras: dict) -> Fake:
        w = self.layer_weights[min(i, len(self.layer_weights) - 1)]
        if self.kind == "gpt2":
            return self._gpt2_layer(t, w, x, extras)
        if self.kind == "nearest":
            return nearest.layer(self, t, w, x, extras)
        if self.kind == "gemma2":
            return self._gemma2_layer(t, i, w, x, extras)
        residual = x
        hs = ly.rms_norm(t, x, w["ln1"])
        hs, _weights = self._llama_attention(t, w, hs, extras)
        hs = ops.add(t, residual, hs)
        residual = hs
        hs = ly.rms_norm(t, hs, w["ln2"])
        hs = self._mlp(t, w, hs)
        return ops.add(t, residual, hs)

    def _mlp(self, t: Tape, w: dict, x: Fake) -> Fake:
        if "experts" in w:
            return moe.moe_block(t, self.ctx, x, w["experts"])
        if "gate_up" in w:
            up_states = ly.linear(t, self.ctx, x, w["gate_up"])
            n = self.model.intermediate_size
            gate = t.view(up_states, up_states.shape[:-1] + (n,))
            up = t.view(up_states, up_states.shape[:-1] + (n,))
            act = ops.unary_saving_input(t, "act", gate)  # saves gate, a view: keeps up_states alive
            prod = ops.mul(t, up, act)
            del up_states, gate, up, act
            return ly.linear(t, self.ctx, prod, w["down"])
        return ly.swiglu_mlp(t, self.ctx, x, w["gate"], w["up"], w["down"])

    def _llama_attention(self, t: Tape, w: dict, x: Fake, extras: dict) -> Fake:
        c = self.ctx
        b, s, a, d = c.b, c.s, c.heads, c.head_dim
        q, k, v = ly.qkv_projections(t, c, x, w, fused="qkv" in w)  # phi3: one projection, split into views
        if "q_norm" in w:  # qwen3: RMSNorm over head_dim before rotary
            q = ly.rms_norm(t, q, w["q_norm"])
            k = ly.rms_norm(t, k, w["k_norm"])
        q = ly.rotary(t, q, extras["cos"], extras["sin"])
        k = ly.rotary(t, k, extras["cos"], extras["sin"])
        if self.kind == "phi3":  # torch.cat([rotated, pass-through], dim=-1): a contiguous copy
            q = t.op("cat", [q], [(q.shape, q.dtype)], [], ops._passthrough_rule)[0]
            k = t.op("cat", [k], [(k.shape, k.dtype)], [], ops._passthrough_rule)[0]
        out, weights = self._attention_core(t, q, k, v, extras.get("mask"), softcap=False)
        out = t.view(out, (b, s, a * d))
        return ly.linear(t, c, out, w["o"]), weights

    def _attention_core(self, t: Tape, q: Fake, k: Fake, v: Fake, mask, *, softcap: bool,
                        gpt2: bool = False):
        """Returns (output [b, s, heads, d], attention weights or None)."""
        c = self.ctx
        n_rep = c.heads // c.kv_heads
        # the v_proj output viewed [b, kv, s, d] is a transpose; one KV head repeated is a stride-0 view
        mqa = n_rep > 1 and c.kv_heads == 1
        if c.attn == "eager":
            kr = ly.repeat_kv(t, k, n_rep)
            vr = ly.repeat_kv(t, v, n_rep)
            return ly.eager_core(t, c, q, kr, vr, mask, softmax_fp32=not gpt2, softcap=softcap,
                                 copy_q=gpt2, copy_k=gpt2 or mqa, copy_v=gpt2 or n_rep == 1 or mqa)
        if c.attn == "sdpa" and self._sdpa_falls_back():
            return ly.sdpa_math(t, c, q, k, v, n_rep, strided=gpt2), None
        if mask is not None:  # --packing under SDPA: with a mask use_gqa_in_sdpa is False, K and V are repeated
            return ly.sdpa_core(t, c, q, ly.repeat_kv(t, k, n_rep), ly.repeat_kv(t, v, n_rep),
                                q_contiguous=self.kind == "phi3", mask=mask), None
        # sdpa / flash_attention_2: memory-efficient kernels; GQA is passed unrepeated (enable_gqa).
        return ly.sdpa_core(t, c, q, k, v, q_contiguous=self.kind == "phi3"), None

    def _sdpa_falls_back(self) -> bool:
        """CPU SDPA runs its flash kernel only without dropout; with dropout it takes the math path, which keeps
        the attention matrix like eager attention (torch/nn/attention, sdp_utils_cpp.cpp)."""
        return self.ctx.device == "cpu" and self.ctx.attn_dropout > 0

    def _gpt2_layer(self, t: Tape, w: dict, x: Fake, extras: dict) -> Fake:
        # GPT2Block.forward: attn_output stays referenced until the block returns; ln_2's output until the
        # MLP returns.
        residual = x
        hs = ly.layer_norm(t, x, w["ln1"], w["ln1_b"])
        attn_output, _weights = self._gpt2_attention(t, w, hs, extras)
        hs = ops.add(t, attn_output, residual)
        residual = hs
        hs = ly.layer_norm(t, hs, w["ln2"], w["ln2_b"])
        ff = self._gpt2_mlp(t, w, hs)
        hs = ops.add(t, residual, ff)
        return hs

    def _gpt2_mlp(self, t: Tape, w: dict, x: Fake) -> Fake:
        c = self.ctx
        hs = ly.linear(t, c, x, w["c_fc"])
        act = self.cfg.get("activation_function", "gelu_new")
        if act in ("gelu_new",):
            hs = ly.new_gelu(t, hs)
        else:
            hs = ops.unary_saving_input(t, "act", hs)
        hs = ly.linear(t, c, hs, w["mlp_proj"])
        return ops.dropout(t, hs, _gpt2_dropout(self, "resid_pdrop"), c.device)

    def _gpt2_attention(self, t: Tape, w: dict, x: Fake, extras: dict):
        # GPT2Attention.forward: the q/k/v views (and so the c_attn output) live until it returns.
        c = self.ctx
        b, s, a, d = c.b, c.s, c.heads, c.head_dim
        qkv = ly.linear(t, c, x, w["c_attn"])
        q, k, v = t.op("split", [qkv], [((b, a, s, d), qkv.dtype)] * 3, [], alias=qkv.st)
        out, weights = self._attention_core(t, q, k, v, extras.get("mask"), softcap=False, gpt2=True)
        out = ly.linear(t, c, t.view(out, (b, s, a * d)), w["c_proj"])
        return ops.dropout(t, out, _gpt2_dropout(self, "resid_pdrop"), c.device), weights

    def layer_kwargs(self, i: int, extras: dict) -> dict:
        """The tensors a checkpointed layer's recomputation closure keeps (its own mask only: Gemma-2 passes
        each layer the mask of its type)."""
        if self.kind != "gemma2":
            return dict(extras)
        drop = "mask" if self._sliding(i) else "mask_sliding"
        return {k: v for k, v in extras.items() if k != drop}

    def _sliding(self, i: int) -> bool:
        types = self.cfg.get("layer_types")
        if isinstance(types, list) and i < len(types):
            return types[i] == "sliding_attention"
        return i % 2 == 0  # Gemma2Config default: sliding on even layers

    def _gemma2_layer(self, t: Tape, i: int, w: dict, x: Fake, extras: dict) -> Fake:
        c = self.ctx
        b, s, a, kv, d = c.b, c.s, c.heads, c.kv_heads, c.head_dim
        residual = x
        hs = ly.gemma_rms_norm(t, x, w["ln1"])
        q = t.view(ly.linear(t, c, hs, w["q"]), (b, a, s, d))
        k = t.view(ly.linear(t, c, hs, w["k"]), (b, kv, s, d))
        v = t.view(ly.linear(t, c, hs, w["v"]), (b, kv, s, d))
        del hs
        q = ly.rotary(t, q, extras["cos"], extras["sin"])
        k = ly.rotary(t, k, extras["cos"], extras["sin"])
        softcap = self.cfg.get("attn_logit_softcapping", 50.0) is not None
        if c.attn == "flash_attention_2":
            out = ly.sdpa_core(t, c, q, k, v)
        else:
            kr = ly.repeat_kv(t, k, a // kv)
            vr = ly.repeat_kv(t, v, a // kv)
            mask = extras.get("mask_sliding" if self._sliding(i) else "mask")
            out, _weights = ly.eager_core(t, c, q, kr, vr, mask, softmax_fp32=True,
                                          softcap=softcap, copy_k=kv == 1 and a > 1,
                                          copy_v=(a // kv) == 1 or kv == 1)
            del kr, vr
        del q, k, v
        hs = ly.linear(t, c, t.view(out, (b, s, a * d)), w["o"])
        del out
        hs = ly.gemma_rms_norm(t, hs, w["ln2"])
        hs = ops.add(t, residual, hs)
        residual = hs
        hs = ly.gemma_rms_norm(t, hs, w["ln3"])
        hs = ly.swiglu_mlp(t, c, hs, w["gate"], w["up"], w["down"])
        hs = ly.gemma_rms_norm(t, hs, w["ln4"])
        return ops.add(t, residual, hs)

    def final_norm(self, t: Tape, h: Fake) -> Fake:
        if self.kind == "nearest":
            bias = self.final_norm_b if self.arch.norm_bias else Param(self.final_norm_b.shape, self.ctx.dtype, False)
            return nearest.norm(self, t, h, self.final_norm_w, bias)
        if self.kind == "gpt2":
            return ly.layer_norm(t, h, self.final_norm_w, self.final_norm_b)
        if self.kind == "gemma2":
            return ly.gemma_rms_norm(t, h, self.final_norm_w)
        return ly.rms_norm(t, h, self.final_norm_w)

    @property
    def final_softcap(self) -> bool:
        return self.kind == "gemma2" and self.cfg.get("final_logit_softcapping", 30.0) is not None


def _position_ids(t: Tape, s: int) -> list:
    """What a learned-position lookup saves: its [1, s] int64 indices (an input, not counted as a tensor here),
    listed only when activation offloading copies them."""
    return [Fake((1, s), "int64", None)] if t.packs else []


def _gpt2_dropout(fam: Family, key: str) -> float:
    return fam.ctx.resid_dropout if key != "attn_pdrop" else fam.ctx.attn_dropout


def build_family(model: ModelSpec, *, method: Method, precision: Precision, b: int, s: int, attn: str,
                 dropout: float | None, adapters: tuple[tuple[str, int], ...], lora_dropout: float,
                 modules_to_save: tuple[str, ...], device: str, zero_stage: int = 0,
                 input_requires_grad: bool = False, adapter_dtype: str | None = None,
                 unquantized_dtype: str | None = None, packed: bool = False) -> Family:
    """``adapter_dtype`` and ``unquantized_dtype``: the dtypes of LoRA adapters and of QLoRA's unquantized
    parameters (estimate/peft_dtypes.py); None: peft's defaults (fp32) as DeepSpeed leaves them."""
    deepspeed = zero_stage > 0
    cfg = model.config or {}
    compute = precision.compute_dtype
    kind = family_kind(model)
    autocast.check_family(model, precision)
    if kind == "gpt2":
        attn_p = cfg.get("attn_pdrop", 0.1) if dropout is None else dropout
        resid_p = cfg.get("resid_pdrop", 0.1) if dropout is None else dropout
    else:
        attn_p = cfg.get("attention_dropout", 0.0) if dropout is None else dropout
        resid_p = 0.0
    arch = nearest_arch(model) if kind == "nearest" else None
    if arch is not None:
        attn_p = arch.attn_dropout if dropout is None else dropout
        resid_p = arch.resid_dropout if dropout is None else dropout
    notes = []
    if kind == "gemma2" and attn == "sdpa":
        attn = "eager"
        notes.append("gemma2 does not support SDPA in transformers (attention softcapping): estimated as eager.")
    # QLoRA as peft's recipe runs it: prepare_model_for_kbit_training casts every parameter that is not 4-bit
    # (embeddings, norms, biases, lm_head) to fp32, so the embedding output, the residual stream, the norms,
    # attention and the logits are fp32; only the 4-bit matmuls run in bnb_4bit_compute_dtype. DeepSpeed casts
    # the module back to the training dtype (states.py), which puts activations back in 16 bits.
    # --qlora-prep 16bit skips the upcast: activations stay in the compute dtype (peft_dtypes.py).
    act_dtype = "fp32" if method is Method.QLORA and not deepspeed else compute
    if method is Method.QLORA and unquantized_dtype is not None:
        act_dtype = unquantized_dtype
    if adapter_dtype is None:
        adapter_dtype = "fp32" if method is not Method.FULL and not deepspeed else compute
    ctx = Ctx(b=b, s=s, h=model.hidden_size, heads=model.num_heads,
              kv_heads=arch.kv_heads if arch is not None else model.num_kv_heads,
              head_dim=model.head_dim, dtype=act_dtype, quant_compute_dtype=compute, device=device, attn=attn, attn_dropout=float(attn_p or 0.0),
              resid_dropout=float(resid_p or 0.0),
              # peft keeps adapters in fp32 on a 16-bit base (autocast_adapter_dtype) unless --lora-dtype 16bit;
              # DeepSpeed casts the whole module to the training dtype (engine._configure_distributed_model:
              # module.bfloat16()/half())
              adapter_dtype=adapter_dtype,
              lora_dropout=float(lora_dropout), quantized=method is Method.QLORA, zero3_linear=zero_stage == 3,
              packed=packed)
    if packed:
        packing.check_modelled(model.model_type, LLAMA_LIKE, attn, device, ctx.attn_dropout)
        notes.append(packing.note(attn, device))
    fam = Family(model, ctx, method, adapters, modules_to_save, input_requires_grad=input_requires_grad)
    fam.notes.extend(notes)
    if fam.arch is not None:
        fam.notes.append(nearest.note(fam.arch))
    elif model.model_type not in LLAMA_LIKE + ("gpt2", "gemma2"):
        fam.notes.append(f"activations of model type {model.model_type!r} are estimated with the llama layer.")
    if method is not Method.FULL and any(".experts." in path for path, _ in adapters):
        fam.notes.append(
            "LoRA on MoE experts (peft ParamWrapper): each layer's expert weights are materialised as W + BA in "
            "the weight dtype during forward and saved for backward (a full copy of the expert stacks)."
        )
    if model.model_type == "deepseek_v2":
        fam.notes.append("deepseek_v2 multi-head latent attention is estimated as grouped-query attention.")
    return fam
