"""``torch.autocast`` on the symbolic tape: the recipe ``--precision bf16-autocast`` / ``fp16-autocast``.

The HF Trainer without DeepSpeed or FSDP keeps fp32 weights and lets accelerate run the forward under autocast:
``Accelerator.prepare_model`` (accelerate 1.16 accelerator.py) replaces ``model.forward`` with
``convert_outputs_to_fp32(autocast_context(forward))`` (``get_mixed_precision_context_manager``: torch.autocast
with bfloat16 or float16). The model computes its loss inside that forward (the Trainer passes the labels).

What torch 2.13's autocast does (aten/src/ATen/autocast_mode.h ``cached_cast``, autocast_mode.cpp): an op of the
lower-precision list (``linear``, ``addmm``, ``mm``, ``bmm``, ``matmul``, ``scaled_dot_product_attention`` on
CPU and CUDA) casts each fp32 floating operand to the autocast dtype first (``aten::_to_copy``; ToCopyBackward
saves nothing and casts the gradient back to fp32 in backward). An operand that is an fp32 leaf requiring grad
(a trainable weight or bias) is cast once per autocast region: the copy is kept in a thread-local cache
(``get_cached_casts``) and reused, and the cache is cleared when the outermost region exits
(``torch.autocast.__exit__`` -> ``torch.clear_autocast_cache``), i.e. when the model's forward returns. Every
other op runs in the dtype its inputs promote to: the embedding, the residual stream and the norms stay fp32,
a matmul's output is 16-bit, and adding it to the fp32 residual promotes back to fp32.

What this keeps alive: each trainable weight's 16-bit copy, which ``mm`` saves for the input's gradient (it
lives until that layer's backward), the 16-bit casts of matmul inputs, saved for the weight's gradient, and in
backward each weight's 16-bit gradient until ToCopyBackward has made its fp32 ``.grad``. Then
``convert_outputs_to_fp32`` copies the 16-bit logits of the model output to fp32 (accelerate utils/operations.py
``convert_to_fp32``), and the Trainer drops the output before backward.

The CUDA and CPU lists differ in ops these families do not run under autocast in 16 bits (CUDA's fp32 list has
``softmax``, ``log_softmax``, ``layer_norm``, ``pow``, ``rsqrt``: here their inputs are fp32 already), so the
same casts happen on both devices; CPU autocast is bfloat16 (float16 is accepted but rarely used).
"""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.step.sim import Fake, Param
from planner.estimate.step.tape import Tape


def cast(t: Tape, x):
    """``cached_cast(dtype, x)``: ``x`` itself when it is not fp32 (or autocast is off); a trainable fp32 weight's
    copy from the region's cache; else a fresh ``_to_copy``."""
    dtype = t.autocast
    if not dtype or x is None or x.dtype != "fp32":
        return x
    if isinstance(x, Param):
        if x.trainable:
            cached = t.autocast_cache.get(id(x))
            if cached is None:
                cached = t.op("to", [x], [(x.shape, dtype)], [])[0]
                t.autocast_cache[id(x)] = cached
            return cached
        return t.op("to", [x], [(x.shape, dtype)], [])[0]
    return t.op("to", [x], [(x.shape, dtype)], [])[0]


def exit_forward(t: Tape, logits: Fake, keep: bool) -> Fake | None:
    """The autocast-wrapped forward returns: the region's cached weight copies are dropped (those a node saved
    live on), then ``convert_outputs_to_fp32`` copies the 16-bit logits to fp32 and the 16-bit output is let go.
    ``keep``: the caller keeps the (converted) output through backward; else the Trainer drops it
    (``compute_loss`` returns the loss only)."""
    t.autocast_cache.clear()
    t.autocast = ""
    converted = t.new(logits.shape, "fp32") if logits.dtype != "fp32" else logits
    del logits
    return converted if keep else None


def exit_recompute(t: Tape) -> None:
    """A checkpointed layer's recomputation leaves the autocast region torch.utils.checkpoint re-entered
    (``recompute_fn``: ``torch.amp.autocast(device_type, **device_autocast_kwargs)``): its cache is cleared."""
    t.autocast_cache.clear()
    t.autocast = ""


def is_cast_weight(w) -> bool:
    """A weight operand that is an autocast copy (a tensor of its own, saved by the matmul) and not the
    parameter itself."""
    return isinstance(w, Fake)


# The families whose layers run only linear and SDPA under autocast in 16 bits (the casts above), checked by the
# autocast cells of the validation matrix; MoE routers and grouped expert matmuls, Gemma 2's eager softcapped
# attention and phi3's fused projections are not written down for autocast yet.
AUTOCAST_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


def check_family(model, precision) -> None:
    if precision.autocast_dtype and (model.model_type not in AUTOCAST_FAMILIES or model.is_moe):
        raise PlannerError(f"--precision {precision.value} is modelled for {', '.join(AUTOCAST_FAMILIES)} (dense) "
                           f"only, not {model.model_type!r}; use bf16-mixed or fp32 for it.")
