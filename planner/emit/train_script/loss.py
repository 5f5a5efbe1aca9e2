"""train.py, the loss part: the planned loss recipe (``--loss``) on the transformers Trainer.

``standard``: the model's own loss (transformers ForCausalLMLoss). ``chunked-ce``: torchtune's
``CEWithChunkedOutputLoss`` (``pip install --no-deps torchtune``), with lm_head applied per chunk of the final
hidden states as torchtune's ``TransformerDecoder.chunked_output`` does, in a Trainer whose ``compute_loss`` runs
the model without logits (``logits_to_keep`` an empty slice) -- what planner's profiler runs
(planner/profile/loss_run.py). ``fused-linear-ce``: Liger's fused linear cross-entropy through
``TrainingArguments(use_liger_kernel=True, liger_kernel_config=...)`` with only that kernel switched on
(``pip install liger-kernel``; Triton, GPU only). ``trl-fused-lm-head``: TRL's fused LM head
(``trl.trainer.utils.add_fused_lm_head``, ``pip install trl``) on the Trainer's model, and the loss SFTTrainer's
``compute_loss`` takes from it for ``loss_type="nll"`` -- what planner's profiler runs.
"""

from __future__ import annotations

LOSS = r'''# ---------------------------------------------------------------- loss

LOSSES = ("standard", "chunked-ce", "fused-linear-ce", "trl-fused-lm-head")
# Liger's kernels the Trainer applies for --loss fused-linear-ce (liger_kernel _apply_liger_kernel_to_instance):
# the fused linear cross-entropy only, the loss planner estimated; the others replace modules it counts as
# transformers writes them.
LIGER_KERNELS = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False, "rms_norm": False,
                 "swiglu": False}


def loss_arguments(args: argparse.Namespace) -> dict:
    """TrainingArguments for the planned loss."""
    if args.loss != "fused-linear-ce":
        return {}
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        fail("--loss fused-linear-ce runs Liger-Kernel's fused linear cross-entropy: pip install liger-kernel "
             "(Triton kernels: a CUDA GPU).")
    return {"use_liger_kernel": True, "liger_kernel_config": dict(LIGER_KERNELS)}


def torchtune_chunked_loss(chunks: int):
    """torchtune's CEWithChunkedOutputLoss, from the installed package's own file (torchtune's __init__ needs
    torchao and its dataset stack, which a loss does not)."""
    import importlib.util

    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.submodule_search_locations:
        fail("--loss chunked-ce runs torchtune's CEWithChunkedOutputLoss: pip install --no-deps torchtune==0.6.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "modules" / "loss" / "ce_chunked_output_loss.py"
    module_spec = importlib.util.spec_from_file_location("torchtune_ce_chunked_output_loss", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.CEWithChunkedOutputLoss(num_output_chunks=chunks)


def trl_fused_trainer(trainer_cls):
    """A Trainer computing TRL SFTTrainer's loss_type "nll": add_fused_lm_head on the (peft base) model, as
    SFTTrainer.__init__ does, and compute_loss's negative log-likelihood over the fused head's log-probabilities."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        fail("--loss trl-fused-lm-head runs TRL's fused LM head: pip install trl")
    from trl.trainer.utils import add_fused_lm_head

    class FusedLMHeadTrainer(trainer_cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # SFTTrainer's outputs

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            inputs = {**inputs, "use_cache": False}
            outputs = model(**inputs, fused_lm_head=True)
            per_token_loss = -outputs.log_probs  # zero on ignored positions
            num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return FusedLMHeadTrainer


def trainer_class(trainer_cls, args: argparse.Namespace):
    """The Trainer for the planned loss: the Trainer itself, or one that computes torchtune's chunked loss or
    TRL's fused-LM-head loss."""
    if args.loss == "trl-fused-lm-head":
        return trl_fused_trainer(trainer_cls)
    if args.loss != "chunked-ce":
        return trainer_cls
    loss_fn = torchtune_chunked_loss(args.loss_chunks)

    class ChunkedLossTrainer(trainer_cls):
        loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            inputs = dict(inputs)
            labels = inputs.pop("labels")
            hf_model = self.accelerator.unwrap_model(model)
            if hasattr(hf_model, "get_base_model"):  # peft
                hf_model = hf_model.get_base_model()
            captured = {}
            hook = hf_model.base_model.register_forward_hook(lambda m, a, out: captured.__setitem__("h", out[0]))
            try:  # the model's own forward (DDP and DeepSpeed see it), without logits
                outputs = model(**inputs, logits_to_keep=slice(0, 0))
            finally:
                hook.remove()
            hidden = captured.pop("h")
            output = hf_model.get_output_embeddings()
            logits = [output(chunk) for chunk in hidden.chunk(loss_fn.num_output_chunks, dim=1)]
            # torchtune's recipes shift the labels: hstack((labels[..., 1:], ignore_index))
            ignore = torch.full((labels.shape[0], 1), loss_fn.ignore_index, dtype=labels.dtype, device=labels.device)
            loss = loss_fn(logits, torch.hstack((labels[..., 1:], ignore)))
            return (loss, outputs) if return_outputs else loss

    return ChunkedLossTrainer


'''
