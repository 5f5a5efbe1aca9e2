"""An FSDP2 plan's accelerate config: the alternative launch (launch.sh runs train.py's own FSDP2 loop under torchrun).

accelerate 1.16's ``fsdp2_prepare_model`` (accelerate/utils/fsdp_utils.py) calls ``fully_shard`` bottom-up on every
module its auto-wrap policy accepts, then on the root; ``TRANSFORMER_BASED_WRAP`` without
``fsdp_transformer_layer_cls_to_wrap`` accepts the classes the model's ``_no_split_modules`` names (its decoder
layers; ``fsdp2_prepare_auto_wrap_policy``), the layout planner estimates. Where it differs: with
``mixed_precision`` bf16 it upcasts trainable parameters to fp32 and its ``MixedPrecisionPolicy`` gathers and
reduces in bf16 (``FullyShardedDataParallelPlugin.set_mixed_precision``: param_dtype = reduce_dtype), where
planner's bf16-mixed FSDP2 reduces in fp32 unless ``--reduce-dtype none``; the HF Trainer's loop, its loss and
its checkpointing run instead of train.py's; and this path is not checked by a profile. PLAN.md and the header
below say so. It cannot be checked on CPU: accelerate 1.16 turns FSDP on only for accelerator process types
(state.py ``AcceleratorState.__init__`` sets ``DistributedType.FSDP`` inside the MULTI_GPU/NPU/XPU/... branch, never
for MULTI_CPU), so this file with train.py ``--cpu`` runs DDP (tried on 2026-12-03: two CPU processes, every
parameter whole on each rank); train.py's own FSDP2 loop under torchrun is the launch a CPU test runs
(tests/test_fsdp2_bundle.py).
"""

from __future__ import annotations

from typing import Any

from planner.specs import TrainSpec

FSDP2_HEADER = (
    "# accelerate launch config written by planner (see PLAN.md): the ALTERNATIVE launch of this FSDP2 plan.\n"
    "# launch.sh runs train.py's own FSDP2 loop under torchrun: fully_shard on every decoder layer, then the root,\n"
    "# the layout planner's estimate describes. With this file (accelerate launch --config_file\n"
    "# accelerate_config.yaml train.py --engine trainer ...) the HF Trainer runs accelerate's FSDP2 instead:\n"
    "# TRANSFORMER_BASED_WRAP wraps the model's _no_split_modules (its decoder layers) and then the root, but\n"
    "# under bf16 accelerate gathers and reduces gradients in bf16 (planner's --reduce-dtype none), and its\n"
    "# memory was not checked against the estimate by a profile. accelerate 1.16 runs FSDP only on GPUs and\n"
    "# other accelerators: with --cpu this file gives DDP, not FSDP2.\n"
)


def fsdp2_accelerate(train: TrainSpec) -> dict[str, Any]:
    """The ``fsdp_config`` block of accelerate's ClusterConfig (accelerate/commands/config/cluster.py)."""
    cfg = train.parallelism.fsdp_config
    return {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_reshard_after_forward": cfg.reshard_after_forward,
        "fsdp_offload_params": cfg.cpu_offload,
        "fsdp_activation_checkpointing": False,  # train.py --grad-checkpointing: transformers' own, per layer
        "fsdp_cpu_ram_efficient_loading": False,
        "fsdp_state_dict_type": "FULL_STATE_DICT",
    }
