"""``TrainSpec.packing`` from the fields the projects document for sequence packing (specs/packing.py: the
micro-batch flattened into one row, position ids reset per document, the mask built from them).

- TRL 1.16 (trl/trainer/sft_trainer.py ``SFTTrainer.__init__``): ``padding_free`` is on when set, or with
  ``packing: true`` and ``packing_strategy`` "bfd" (the default) or "bfd_split" (SFTConfig maps "bfd-requeue" to
  it); the collator then flattens the batch (``DataCollatorForLanguageModeling.torch_call``). ``packing`` with the
  "wrapped" strategy keeps [micro_batch, max_length] rows with an all-ones attention mask: documents attend
  across their boundaries, and the step is the unpacked one.
- LLaMA-Factory: ``packing`` concatenates documents into rows of ``cutoff_len`` with a plain causal mask (the
  unpacked step); ``neat_packing`` builds its own block-diagonal 4-D mask per row, which planner does not model.
- axolotl: ``sample_packing`` bins documents into rows; with ``flash_attention`` they run varlen from the position
  ids (no mask), which planner's packed step with flash_attention_2 is; with other attention its masks are not
  modelled.
- torchtune: ``dataset.packed`` (PackedDataset) keeps [batch, max_seq_len] rows with a per-row block mask (a
  [b, s, s] bool for SDPA, a BlockMask for flex attention), not the flattened row planner models.
"""

from __future__ import annotations

from planner.from_config.reader import Reader

TRL_FLATTENING_STRATEGIES = ("bfd", "bfd_split", "bfd-requeue")


def trl_packing(r: Reader) -> bool:
    """SFTConfig's packing / padding_free as the trainer runs them (padding-free: planner's --packing)."""
    packing = bool(r.flag("packing", False))
    strategy = r.text("packing_strategy", "bfd")
    if bool(r.flag("padding_free", False)) or (packing and strategy in TRL_FLATTENING_STRATEGIES):
        return True
    if packing:
        r.notes.append(f"packing_strategy {strategy}: TRL keeps [micro-batch, max_length] rows with an all-ones "
                       "attention mask (documents attend across rows' boundaries): estimated as unpacked rows.")
    return False


def llamafactory_packing(r: Reader) -> bool:
    if r.flag("neat_packing", False):
        r.refuse("neat_packing: true", "builds LLaMA-Factory's own block-diagonal 4-D mask per row, which planner "
                 "does not model yet; planner's --packing is TRL's padding-free packing.")
    if r.flag("packing", False):
        r.notes.append("packing without neat_packing: LLaMA-Factory concatenates documents under a plain causal "
                       "mask, so the step's memory is the unpacked one's (no --packing).")
    return False


def axolotl_packing(r: Reader, attn: str | None) -> bool:
    if not r.flag("sample_packing", False):
        return False
    if attn != "flash_attention_2":
        r.refuse("sample_packing: true", f"with {attn or 'the default'} attention builds axolotl's own masks, which "
                 "planner does not model yet; use flash_attention: true (varlen, no mask).")
    return True


def torchtune_packing(r: Reader, packed: bool) -> bool:
    if packed:
        r.refuse("dataset.packed: true", "keeps [batch, max_seq_len] rows with torchtune's per-row block mask "
                 "(PackedDataset), which planner does not model yet; planner's --packing flattens the micro-batch "
                 "as TRL does.")
    return False
