"""``TrainSpec.compile`` from the fields the projects document for torch.compile.

- transformers TrainingArguments (training_args.py, also TRL's configs, LLaMA-Factory's and axolotl's, which pass
  it through): ``torch_compile: true``; ``torch_compile_backend`` or ``torch_compile_mode`` alone also switch it on
  (``TrainingArguments.__post_init__``). planner profiles the inductor backend at its default mode; another backend,
  or a mode that captures CUDA graphs (``reduce-overhead``, ``max-autotune``: static graph buffers kept between
  steps), is refused.
- torchtune (recipes/lora_finetune_single_device.py ``_setup_model``, torchtune/training/_compile.py):
  ``compile: true`` compiles each transformer layer in place (``compile_model``: ``m.compile(backend=inductor)``)
  and the loss (``compile_loss``); planner's profiler compiles the whole model as the HF Trainer does, and the
  estimate is eager's either way, so a note says which.
"""

from __future__ import annotations

from planner.from_config.reader import Reader

HF_MODES = (None, "default", "max-autotune-no-cudagraphs")


def hf_compile(r: Reader) -> bool:
    """TrainingArguments' torch_compile, switched on by its backend or mode too; refuses what is not inductor."""
    backend, mode = r.text("torch_compile_backend"), r.text("torch_compile_mode")
    on = bool(r.flag("torch_compile", False)) or backend is not None or mode is not None
    if on and backend not in (None, "inductor"):
        r.refuse(f"torch_compile_backend: {backend}", "is not modelled; planner profiles torch.compile with inductor.")
    if on and mode not in HF_MODES:
        r.refuse(f"torch_compile_mode: {mode}", "captures CUDA graphs, whose static buffers planner does not model; "
                 "use the default mode or max-autotune-no-cudagraphs.")
    return on


TORCHTUNE_NOTE = ("compile: torchtune compiles each layer and the loss (training.compile_model, compile_loss); "
                  "the estimate keeps eager's activations either way.")


def torchtune_compile(r: Reader) -> bool:
    """torchtune's compile: true (with a note on its per-layer compile)."""
    on = bool(r.flag("compile", False))
    if on:
        r.notes.append(TORCHTUNE_NOTE)
    return on
