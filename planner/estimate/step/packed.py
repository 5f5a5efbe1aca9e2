"""Sequence packing on the tape (``--packing``; specs/packing.py): one row of every token, the mask built from
the position ids.

The collator (transformers ``DataCollatorWithFlattening``, TRL ``DataCollatorForLanguageModeling`` with
``padding_free``) hands the model ``input_ids``, ``labels`` and ``position_ids`` of shape [1, b * s] and no
attention mask: the step is simulated at micro-batch 1 and sequence length b * s (simulate.step_inputs). What
packing adds, from transformers 5.24 and torch 2.13:

- ``masking_utils.create_causal_mask``: ``_preprocess_mask_arguments`` finds the documents from the position ids
  (``find_packed_sequence_indices``: ``torch.diff``, ``!= 1``, ``cumsum``: an int64 [1, T]), so the causal mask
  cannot be skipped (``allow_is_causal_skip = False``). ``sdpa_mask`` evaluates ``and_masks(remap(causal),
  packed)`` by broadcasting: ``result & causal(...)`` and then ``result & same_document(...)``, each a
  [1, 1, T, T] bool, three of them alive at the second ``&``. SDPA takes the bool mask; eager turns it into an
  additive mask in the activation dtype (``eager_mask``: ``torch.where``). The base model holds it until it
  returns; a checkpointed layer's frame keeps it with the layer's kwargs.
- ``integrations/sdpa_attention.py``: with a mask, ``use_gqa_in_sdpa`` is False, so grouped-query K and V are
  repeated to every head (``repeat_kv``: copies) before ``F.scaled_dot_product_attention``.
- ``F.scaled_dot_product_attention`` (aten/src/ATen/native/transformers/attention.cpp):
  ``convert_boolean_attn_mask`` turns the bool mask into an additive one of the query's dtype
  (``logical_not`` then ``where``: a [1, 1, T, T] bool and the [1, 1, T, T] result) in every call, and the CPU
  flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) saves that mask for backward: one per layer.
  Checked on torch 2.13: ``grad_fn._saved_attn_mask`` is a new [1, 1, T, T] bf16 tensor for a bf16 query.
- Flash attention 2 runs varlen from the position ids (``flash_attention_mask`` makes none): nothing is added.

On CUDA, SDPA with a mask runs the memory-efficient kernel, which also saves the converted mask; its alignment
padding of the mask's last dimension is not modelled (no GPU profile checks it yet).
"""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.step.tape import Fake, Tape


def check_modelled(model_type: str, llama_like: tuple[str, ...], attn: str, device: str, attn_dropout: float) -> None:
    """Packing is written for the llama-like layers (their attention builds its mask in create_causal_mask)."""
    if model_type not in llama_like:
        raise PlannerError(f"--packing is modelled for llama-like families ({', '.join(llama_like)}), not "
                           f"{model_type!r} yet.")
    if attn == "sdpa" and device == "cpu" and attn_dropout > 0:
        raise PlannerError("--packing with attention dropout on CPU runs SDPA's math path with the mask, which is "
                           "not written down yet; use --dropout 0.")


def note(attn: str, device: str) -> str:
    """What the estimate of a packed step counts, for the user."""
    if attn == "flash_attention_2":
        return ("--packing with flash_attention_2: one row of micro-batch x seq-len tokens run varlen from the "
                "position ids, no mask.")
    what = ("an additive (tokens x tokens) mask in the activation dtype and (heads x tokens x tokens) scores"
            if attn == "eager" else
            "a (tokens x tokens) bool mask, and per layer a query-dtype copy SDPA saves for backward, with grouped-query "
            "K and V repeated to every head")
    gpu = (" On CUDA the figure follows the CPU kernel's measured behaviour; the memory-efficient kernel's padding of "
           "the mask is not modelled (no GPU profile yet)." if device != "cpu" and attn == "sdpa" else "")
    return (f"--packing: one row of micro-batch x seq-len tokens; the mask built from the reset position ids costs "
            f"{what}, growing with the square of the row (flash_attention_2 runs without one).{gpu}")


def build_mask(t: Tape, tokens: int, attn: str, dtype: str) -> Fake | None:
    """``create_causal_mask`` for one packed row of ``tokens``: the bool mask (SDPA), the additive one (eager)
    or none (flash attention 2, varlen)."""
    if attn == "flash_attention_2":
        return None
    # find_packed_sequence_indices: diff, != 1, cumsum -> the document index of every token, int64 [1, T]
    diff = t.new((1, tokens), "int64")
    new_doc = t.new((1, tokens), "bool")
    del diff
    docs = t.new((1, tokens), "int64")
    del new_doc
    square = (1, 1, tokens, tokens)
    causal = t.new(square, "bool")  # remap(causal): position_ids[kv] <= position_ids[q]
    first = t.new(square, "bool")  # result & causal
    del causal
    same_doc = t.new(square, "bool")  # docs[q] == docs[kv]
    mask = t.new(square, "bool")  # result & same_doc
    del first, same_doc, docs
    if attn == "eager":  # eager_mask: torch.where(mask, 0, min_dtype)
        additive = t.new(square, dtype)
        del mask
        return additive
    return mask


def sdpa_saved_mask(t: Tape, mask: Fake, dtype: str) -> Fake:
    """``convert_boolean_attn_mask`` inside one ``F.scaled_dot_product_attention`` call: the additive mask the
    kernel saves for backward (``where(attn_mask.logical_not(), -inf, 0)``)."""
    negated = t.new(mask.shape, "bool")
    converted = t.new(mask.shape, dtype)
    del negated
    return converted
