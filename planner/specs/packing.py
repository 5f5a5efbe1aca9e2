"""Sequence packing (issue 16 item 5): what ``TrainSpec.packing`` means and what it is modelled with.

Packing as transformers and TRL run it padding-free: ``DataCollatorWithFlattening`` (transformers
data/data_collator.py) and TRL 1.16's ``DataCollatorForLanguageModeling(padding_free=True)`` (which
``SFTConfig(packing=True)`` turns on with its default ``packing_strategy="bfd"``: sft_trainer.py ``__init__``)
concatenate the micro-batch's rows into one row of ``micro_batch * seq_len`` tokens with the position ids reset
at every document and no attention mask. The model then builds the mask from the position ids
(transformers masking_utils.py ``find_packed_sequence_indices``; estimate/step/packed.py).
"""

from __future__ import annotations

from planner.errors import PlannerError

PACKING_HELP = ("Sequence packing, padding-free (TRL packing=True, transformers DataCollatorWithFlattening): the "
                "micro-batch's rows go in as one row of micro-batch x seq-len tokens, the position ids reset at every "
                "document; SDPA and eager attention then build a [tokens, tokens] mask from them (flash attention "
                "runs varlen, without one). Default off.")


def check_packing(*, sft: bool, activation_offload: bool) -> None:
    """The combinations packing is modelled and profiled with (TrainSpec's), the rest refused in one sentence."""
    if not sft:
        raise PlannerError("--packing with --task dpo is not modelled: TRL's DPOTrainer pads its chosen and "
                           "rejected rows (padding_free there is another collator); use --task sft.")
    if activation_offload:
        raise PlannerError("--packing with --activation-offload is not modelled yet (save_on_cpu would copy each "
                           "layer's attention mask to the host); use one of them.")
