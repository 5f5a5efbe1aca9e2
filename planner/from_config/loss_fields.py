"""The loss recipe a training config names (``TrainSpec.loss``), by the projects' documented field names.

- axolotl (src/axolotl/integrations/liger/args.py, integrations/cut_cross_entropy/args.py, with their plugins
  ``axolotl.integrations.liger.LigerPlugin`` / ``...cut_cross_entropy.CutCrossEntropyPlugin``):
  ``liger_fused_linear_cross_entropy: true`` and ``cut_cross_entropy: true`` are fused linear cross-entropy.
- LLaMA-Factory (src/llamafactory/model/model_utils/liger_kernel.py ``apply_liger_kernel``):
  ``enable_liger_kernel: true`` calls Liger's ``apply_liger_kernel_to_<model>`` with its defaults, which include
  ``fused_linear_cross_entropy=True`` for the sft and pt stages.
- torchtune: ``loss: {_component_: torchtune.modules.loss.CEWithChunkedOutputLoss, num_output_chunks: N}``
  (default 8), the loss its recipes ship with.
- TRL 1.16 SFTConfig (trl/trainer/sft_config.py): ``loss_type`` ``"nll"`` (the default; ``"chunked_nll"`` is its
  deprecated alias, turned into ``"nll"`` in ``__post_init__``) runs SFTTrainer's fused LM head
  (``add_fused_lm_head``); ``"dft"`` weighs each token's loss by its probability. A plain TrainingArguments file
  (no TRL field) is the Trainer's own loss.
"""

from __future__ import annotations

from planner.specs import DEFAULT_LOSS_CHUNKS, Loss, LossSpec

# axolotl plugins whose only memory effect planner reads through their own fields below
AXOLOTL_LOSS_PLUGINS = frozenset({
    "axolotl.integrations.liger.LigerPlugin", "axolotl.integrations.liger.plugin.LigerPlugin",
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
})
# Liger's other kernels (RoPE, RMSNorm, LayerNorm, SwiGLU/GEGLU) replace transformers' modules
LIGER_OTHER_KERNELS_NOTE = (
    "Liger's other kernels ({}) are not modelled: the estimate counts transformers' own modules there."
)
CCE_NOTE = ("cut_cross_entropy (Apple's Cut Cross-Entropy) is estimated as Liger's fused linear cross-entropy; "
            "CCE keeps no lm_head-sized gradient from its forward, so for a trainable lm_head it needs that much less.")
TORCHTUNE_CHUNKED = ("torchtune.modules.loss.CEWithChunkedOutputLoss",
                     "torchtune.modules.loss.ce_chunked_output_loss.CEWithChunkedOutputLoss")
TORCHTUNE_STANDARD = ("torch.nn.CrossEntropyLoss", "torch.nn.modules.loss.CrossEntropyLoss")


def axolotl_loss(r) -> LossSpec:
    plugins = r.names("plugins") or ()
    other = [p for p in plugins if p not in AXOLOTL_LOSS_PLUGINS]
    if other:
        r.refuse(f"plugins: {', '.join(other)}", "change memory in ways planner does not model (it reads the Liger "
                 "and Cut Cross-Entropy plugins' loss fields).")
    liger = bool(r.flag("liger_fused_linear_cross_entropy", False))
    cce = bool(r.flag("cut_cross_entropy", False))
    kernels = [k for k in ("liger_rope", "liger_rms_norm", "liger_layer_norm", "liger_glu_activation")
               if r.flag(k, False)]
    if kernels:
        r.notes.append(LIGER_OTHER_KERNELS_NOTE.format(", ".join(kernels)))
    if cce and not liger:
        r.notes.append(CCE_NOTE)
    return LossSpec(Loss.FUSED_LINEAR_CE) if liger or cce else LossSpec()


def llamafactory_loss(r) -> LossSpec:
    if not r.flag("enable_liger_kernel", False):
        return LossSpec()
    r.notes.append("enable_liger_kernel: Liger's fused linear cross-entropy (apply_liger_kernel's default); "
                   + LIGER_OTHER_KERNELS_NOTE.format("RoPE, RMSNorm, SwiGLU"))
    return LossSpec(Loss.FUSED_LINEAR_CE)


def torchtune_loss(r, component: str | None) -> LossSpec:
    """``component``: the config's ``loss._component_`` (None: no loss section)."""
    if component is None or component in TORCHTUNE_STANDARD:
        return LossSpec()
    if component not in TORCHTUNE_CHUNKED:
        r.refuse(f"loss: {component}", "is a loss planner does not model (it models torch.nn.CrossEntropyLoss and "
                 "torchtune.modules.loss.CEWithChunkedOutputLoss).")
    section = r.data.get("loss") or {}
    chunks = section.get("num_output_chunks", DEFAULT_LOSS_CHUNKS)
    if "num_output_chunks" in section:
        r.used.add("loss.num_output_chunks")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise r.bad("loss.num_output_chunks", chunks, "a whole number from 1")
    for k in section:
        if k not in ("_component_", "num_output_chunks"):
            r.ignored[f"loss.{k}"] = "does not change memory or time"
    return LossSpec(Loss.CHUNKED_CE, chunks)


def trl_loss(r, trl: bool) -> LossSpec:
    """``loss_type`` of a TRL SFTConfig (``trl``: the file has TRL's own fields); the standard loss otherwise."""
    loss = r.text("loss_type")
    if loss == "dft":
        r.refuse("loss_type: dft", "weighs each token's loss by its probability, which planner does not model (it "
                 "models nll).")
    if loss not in (None, "nll", "chunked_nll"):
        r.refuse(f"loss_type: {loss}", "is not one of TRL's SFTConfig loss types planner models (nll).")
    if not trl:
        return LossSpec()
    value = r.data.get("label_smoothing_factor")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        r.refuse(f"label_smoothing_factor: {value}", "makes SFTTrainer compute the loss on the full logits beside "
                 "its fused LM head, which planner does not model.")
    if loss is None:
        r.notes.append("loss_type is unset: TRL's SFTConfig defaults to nll, SFTTrainer's fused LM head.")
    return LossSpec(Loss.TRL_FUSED_LM_HEAD)
