"""Emit a plan as a run bundle: train.py, accelerate_config.yaml, ds_config.json, launch.sh, PLAN.md.

Pure: builds text from specs and never imports torch, transformers or deepspeed (the emitted train.py
does, when it runs).
"""

from planner.emit.accelerate_config import accelerate_config, distributed_type
from planner.emit.bundle import MARKER, render_bundle, weights_reference, write_bundle, write_files
from planner.emit.ds_config import bucket_sizes, deepspeed_config
from planner.emit.plan_md import profile_argv

__all__ = [
    "MARKER",
    "accelerate_config",
    "bucket_sizes",
    "deepspeed_config",
    "distributed_type",
    "profile_argv",
    "render_bundle",
    "weights_reference",
    "write_bundle",
    "write_files",
]
