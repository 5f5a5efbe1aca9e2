"""The loss recipe of a profiled run (``TrainSpec.loss``), through the library that implements it.

``standard``: the model's own output (``.logits``) and ``hf_model.loss_function`` (transformers ForCausalLMLoss).

``chunked-ce``: torchtune's ``CEWithChunkedOutputLoss`` (torchtune 0.6.1, torchtune/modules/loss/
ce_chunked_output_loss.py), on the HF model's hidden states with the output projection applied per chunk in the
forward, as torchtune's ``TransformerDecoder.chunked_output`` does (``[self.output(chunk) for chunk in
h.chunk(n, dim=1)]``), and the labels shifted as torchtune's recipes do (``torch.hstack((labels[..., 1:],
ignore_labels_cache[:b]))``). The model still runs its own forward (so DDP's and DeepSpeed's hooks see it) with
``logits_to_keep`` an empty slice, so its own lm_head makes no logits; a forward hook on the base model takes the
final hidden states. torchtune's package ``__init__`` imports torchao and its dataset stack, which a loss does not
need: the class is loaded from the installed torchtune's own file (``pip install --no-deps torchtune``).

``fused-linear-ce``: Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` on CUDA where ``liger_kernel`` is
installed (its kernels are Triton); the labels shifted as its ``LigerForCausalLMLoss`` does.

``trl-fused-lm-head``: TRL's ``add_fused_lm_head`` (trl/trainer/utils.py) on the HF model (the peft base model,
as ``SFTTrainer.__init__`` does, with SFTTrainer's outputs), the model called with ``labels`` and
``fused_lm_head=True``, and the loss ``SFTTrainer.compute_loss`` takes for ``loss_type="nll"``:
``(-log_probs).sum() / label_mask.sum().clamp(min=1)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from planner.errors import PlannerError
from planner.specs import Loss, TrainSpec

IGNORE_INDEX = -100  # torchtune's CROSS_ENTROPY_IGNORE_IDX, transformers' and Liger's ignore_index
_TORCHTUNE_LOSS_FILE = ("modules", "loss", "ce_chunked_output_loss.py")


def chunked_loss_class():
    """torchtune's CEWithChunkedOutputLoss, from the installed package's own file."""
    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.submodule_search_locations:
        raise PlannerError("--loss chunked-ce is profiled with torchtune's CEWithChunkedOutputLoss: "
                           "install it with 'pip install --no-deps torchtune==0.6.1'.")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_TORCHTUNE_LOSS_FILE)
    mod_spec = importlib.util.spec_from_file_location("torchtune_ce_chunked_output_loss", path)
    if mod_spec is None or mod_spec.loader is None or not path.is_file():
        raise PlannerError(f"the installed torchtune has no {'/'.join(_TORCHTUNE_LOSS_FILE)}.")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.CEWithChunkedOutputLoss


TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")  # SFTTrainer.__init__'s add_fused_lm_head(outputs=...)


def check_loss_runs(train: TrainSpec, device: str) -> None:
    """Refuse a loss this machine cannot run, before the run starts."""
    if train.loss.kind is Loss.TRL_FUSED_LM_HEAD and importlib.util.find_spec("trl") is None:
        raise PlannerError("--loss trl-fused-lm-head is profiled with TRL's fused LM head: install it with "
                           "'pip install trl==1.16.0'.")
    if train.loss.kind is Loss.CHUNKED_CE:
        chunked_loss_class()
    elif train.loss.kind is Loss.FUSED_LINEAR_CE:
        if device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
            raise PlannerError("--loss fused-linear-ce runs Liger-Kernel's Triton kernels: it needs --device cuda "
                               "and 'pip install liger-kernel'; on CPU its memory is estimated from source only.")


class LossRun:
    """``forward(module, ids)`` -> what the loss takes; ``loss(outputs, ids)`` -> the scalar loss."""

    def __init__(self, built, train: TrainSpec) -> None:
        self.hf_model = built.hf_model
        self.kind = train.loss.kind
        self.chunks = train.loss.chunks
        self.loss_fn: Any = None
        # --packing: the collator's {"labels", "position_ids"} of the current batch (set by the runner), else None
        self.packed: dict[str, torch.Tensor] | None = None
        self.inside = bool(train.precision.autocast_dtype)  # the loss inside the model's (autocast) forward
        if self.kind is Loss.CHUNKED_CE:
            self.loss_fn = chunked_loss_class()(num_output_chunks=self.chunks, ignore_index=IGNORE_INDEX)
        elif self.kind is Loss.FUSED_LINEAR_CE:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self.loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)
        elif self.kind is Loss.TRL_FUSED_LM_HEAD:
            from trl.trainer.utils import add_fused_lm_head

            base = self.hf_model.get_base_model() if hasattr(self.hf_model, "get_base_model") else self.hf_model
            add_fused_lm_head(base, outputs=TRL_OUTPUTS)

    def _labels(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.packed is None else self.packed["labels"]

    def _kwargs(self) -> dict[str, Any]:
        """The batch's position ids under --packing (the model builds the packed mask from them)."""
        return {} if self.packed is None else {"position_ids": self.packed["position_ids"]}

    def forward(self, module, ids: torch.Tensor):
        kw = self._kwargs()
        if self.kind is Loss.STANDARD and self.inside:
            # the HF Trainer's compute_loss under autocast (autocast_run.py): the labels go to the model, which
            # computes the loss in its autocast-wrapped forward; the output (loss, fp32 logits) is dropped
            # before backward
            return module(input_ids=ids, labels=self._labels(ids), use_cache=False, **kw)
        if self.kind is Loss.STANDARD:
            return module(input_ids=ids, use_cache=False, **kw).logits
        if self.kind is Loss.TRL_FUSED_LM_HEAD:
            return module(input_ids=ids, labels=self._labels(ids), use_cache=False, fused_lm_head=True, **kw)
        captured: dict[str, torch.Tensor] = {}

        def take(_mod, _args, out) -> None:
            captured["hidden"] = out[0]

        handle = self.hf_model.base_model.register_forward_hook(take)
        try:
            module(input_ids=ids, use_cache=False, logits_to_keep=slice(0, 0), **kw)
        finally:
            handle.remove()
        hidden = captured.pop("hidden")
        if self.kind is Loss.FUSED_LINEAR_CE:
            return hidden
        output = self.hf_model.get_output_embeddings()
        # TransformerDecoder.chunked_output
        return [output(chunk) for chunk in hidden.chunk(self.chunks, dim=1)]

    def loss(self, outputs, ids: torch.Tensor) -> torch.Tensor:
        if self.kind is Loss.STANDARD and self.inside:
            return outputs["loss"]
        if self.kind is Loss.STANDARD:
            # transformers ForCausalLMLoss, called on its own so that forward and loss are separate phases
            return self.hf_model.loss_function(logits=outputs, labels=self._labels(ids), vocab_size=self.hf_model.config.vocab_size)
        if self.kind is Loss.TRL_FUSED_LM_HEAD:
            # SFTTrainer.compute_loss, loss_type "nll"
            per_token_loss = -outputs.log_probs
            return per_token_loss.sum() / outputs.label_mask.sum().clamp(min=1)
        if self.kind is Loss.CHUNKED_CE:
            ignore = torch.full((ids.shape[0], 1), IGNORE_INDEX, dtype=ids.dtype, device=ids.device)
            labels = torch.hstack((ids[..., 1:], ignore))
            return self.loss_fn(outputs, labels)
        # LigerForCausalLMLoss: pad, shift, flatten
        labels = torch.nn.functional.pad(ids, (0, 1), value=IGNORE_INDEX)[..., 1:].contiguous()
        hidden = outputs.view(-1, outputs.shape[-1])
        return self.loss_fn(self.hf_model.get_output_embeddings().weight, hidden, labels.view(-1))
