"""The dtypes of what peft adds to a 16-bit base or keeps beside it (issue 16 item 6): LoRA adapters
(``--lora-dtype``) and QLoRA's parameters that bitsandbytes does not quantize (``--qlora-prep``), with what
follows for their gradients and the optimizer. One place that every rule asks (states, sharding, traffic and
the simulated step).

- LoRA adapters, fp32 (default): peft 0.21.2 ``get_peft_model(..., autocast_adapter_dtype=True)`` ->
  ``BaseTuner._cast_adapter_dtype`` -> ``cast_adapter_dtype`` (tuners/tuners_utils.py) upcasts every float16 /
  bfloat16 adapter parameter to float32. 16bit: ``autocast_adapter_dtype=False`` leaves them where
  ``BaseTunerLayer._move_adapter_to_device_of_base_layer`` put them, in the base layer's dtype (a bitsandbytes
  Linear4bit's ``compute_dtype``): the compute dtype.
- QLoRA's unquantized parameters, fp32 (default): peft ``prepare_model_for_kbit_training`` (utils/other.py) casts
  every float16/bfloat16 parameter that is not ``Params4bit`` (embeddings, norms, lm_head, biases) to float32,
  so the residual stream, the norms, attention and the logits run in fp32 (step/family_layers.py). 16bit: the
  call is skipped and they stay in the compute dtype they were loaded in (torchtune's QLoRA recipes, Unsloth).
- DeepSpeed with bf16/fp16 enabled casts the whole module, adapters and unquantized parameters included, to the
  16-bit dtype (runtime/engine.py ``_configure_distributed_model``: ``module.bfloat16()`` / ``half()``), whatever
  either setting asked; its optimizer keeps fp32 masters of every trainable parameter (states.py).
- 16-bit adapters without DeepSpeed are stepped as they are: the HF Trainer (accelerate) keeps no master copy
  (only DeepSpeed's optimizers make one), and torch's AdamW / SGD create their states with
  ``torch.zeros_like(p)`` (torch/optim/adamw.py ``_init_group``, sgd.py), in the adapter's 16-bit dtype.
"""

from __future__ import annotations

from planner.specs import Method, PeftDtype, TrainSpec


def _deepspeed_casts(train: TrainSpec) -> bool:
    """DeepSpeed's engine casts the whole module to the 16-bit training dtype."""
    return train.uses_deepspeed and train.precision.has_master_weights


def adapter_dtype(train: TrainSpec) -> str:
    """The dtype of LoRA adapter weights and their gradients (the compute dtype for full fine-tuning, which
    has none)."""
    compute = train.precision.compute_dtype
    if train.method is Method.FULL or _deepspeed_casts(train) or train.lora_dtype is PeftDtype.BIT16:
        return compute
    return "fp32"


def unquantized_dtype(train: TrainSpec) -> str:
    """The dtype of QLoRA's parameters that stay unquantized, which is also the dtype of its activations (the
    compute dtype outside QLoRA)."""
    compute = train.precision.compute_dtype
    if train.method is not Method.QLORA or _deepspeed_casts(train) or train.qlora_prep is PeftDtype.BIT16:
        return compute
    return "fp32"


def adapters_stepped_in_16bit(train: TrainSpec) -> bool:
    """16-bit adapters that the optimizer steps directly, with no fp32 master copy and states in their dtype
    (without DeepSpeed: the HF Trainer's recipe; DeepSpeed keeps fp32 masters of them)."""
    return (train.method is not Method.FULL and not train.uses_deepspeed
            and adapter_dtype(train) != "fp32")
