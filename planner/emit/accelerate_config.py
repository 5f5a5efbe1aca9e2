"""The `accelerate launch` config of a plan, in the YAML that ``accelerate config`` writes.

ZeRO 1-3: ``distributed_type: DEEPSPEED`` pointing at ds_config.json. accelerate refuses a config file
that sets ``mixed_precision`` (or gradient accumulation, clipping, ZeRO stage, offload) next to
``deepspeed_config_file`` (accelerate/utils/dataclasses.py, ``DeepSpeedPlugin._deepspeed_config_checks``):
those live in ds_config.json only. FSDP2 (``distributed_type: FSDP``, ``fsdp_version: 2``) is the
alternative launch of an FSDP2 plan (emit/fsdp2_accelerate.py); launch.sh runs torchrun. ZeRO 0 on several GPUs is plain DDP (``MULTI_GPU``); one GPU is ``NO``.
Multi-node plans use the "standalone" launcher: the same command on every node with its machine rank.
"""

from __future__ import annotations

from typing import Any

import yaml

from planner.emit.fsdp2_accelerate import FSDP2_HEADER, fsdp2_accelerate
from planner.specs import Cluster, Precision, TrainSpec

DS_CONFIG_FILE = "ds_config.json"
DEFAULT_MAIN_PROCESS_PORT = 29500

_MIXED_PRECISION = {
    Precision.BF16_MIXED: "bf16",
    Precision.BF16: "bf16",
    Precision.FP16_MIXED: "fp16",
    Precision.BF16_AUTOCAST: "bf16",
    Precision.FP16_AUTOCAST: "fp16",
    Precision.FP32: "no",
    Precision.BF16_BASE_AUTOCAST: "bf16",
}


def distributed_type(train: TrainSpec, cluster: Cluster) -> str:
    if train.uses_fsdp2:
        return "FSDP"
    if train.uses_deepspeed:
        return "DEEPSPEED"
    return "MULTI_GPU" if cluster.num_gpus > 1 else "NO"


def accelerate_config(train: TrainSpec, cluster: Cluster) -> dict[str, Any]:
    """The accelerate ClusterConfig fields (accelerate/commands/config/config_args.py) as a dict."""
    kind = distributed_type(train, cluster)
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": kind,
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "machine_rank": 0,
        "main_process_port": DEFAULT_MAIN_PROCESS_PORT,
        "main_training_function": "main",
        "num_machines": cluster.num_nodes,
        "num_processes": cluster.num_gpus,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if kind == "DEEPSPEED":
        config["deepspeed_config"] = {
            "deepspeed_config_file": DS_CONFIG_FILE,
            "deepspeed_multinode_launcher": "standalone",
            # ZeRO-3 builds the model already partitioned (deepspeed.zero.Init); the Trainer does the same.
            "zero3_init_flag": train.zero_stage == 3,
        }
    else:
        config["mixed_precision"] = _MIXED_PRECISION[train.precision]
        config["gpu_ids"] = "all"
    if kind == "FSDP":
        config["fsdp_config"] = fsdp2_accelerate(train)
        replicas = train.parallelism.fsdp_config.replicate_degree
        if replicas > 1:  # HSDP: accelerate's ParallelismConfig mesh (accelerate/commands/config/cluster.py)
            config["parallelism_config"] = {"parallelism_config_dp_replicate_size": replicas,
                                            "parallelism_config_dp_shard_size": cluster.num_gpus // replicas}
    return dict(sorted(config.items()))


def render_accelerate_yaml(train: TrainSpec, cluster: Cluster) -> str:
    if train.uses_fsdp2:
        return FSDP2_HEADER + yaml.safe_dump(accelerate_config(train, cluster), sort_keys=True,
                                             default_flow_style=False)
    header = (
        "# accelerate launch config written by planner (see PLAN.md).\n"
        "# Precision, batch sizes, clipping and ZeRO settings live in ds_config.json when DeepSpeed is used.\n"
    )
    return header + yaml.safe_dump(accelerate_config(train, cluster), sort_keys=True, default_flow_style=False)
