"""launch.sh of an FSDP2 plan: ``torchrun`` running train.py's own FSDP2 loop (train.py ``--engine fsdp2``).

The loop wraps the model as planner's estimate models it (fully_shard per decoder layer, then the root); the
accelerate config beside it is the alternative launch (fsdp2_accelerate.py). User values are quoted as in
launch.py; torchrun runs as ``$PYTHON -m torch.distributed.run``.
"""

from __future__ import annotations

import shlex

from planner.emit.accelerate_config import DEFAULT_MAIN_PROCESS_PORT
from planner.emit.launch import SMOKE_RUN, _comment_safe, _train_args
from planner.specs import Cluster

LAUNCHER = '"$PYTHON" -m torch.distributed.run'


def render_torchrun_sh(*, label: str, cluster: Cluster, model_ref: str | None, dataset: str,
                       tokenizer: str | None = None) -> str:
    """The bash script. Extra arguments given to launch.sh are passed on to train.py ("$@")."""
    train_args = " ".join(shlex.quote(a) for a in _train_args(model_ref, dataset, tokenizer))
    multi = cluster.num_nodes > 1
    lines = [
        "#!/usr/bin/env bash",
        "# Launch the plan written by planner (see PLAN.md):",
        f"#   {_comment_safe(label)}",
        "# FSDP2 as planner estimates it: train.py's own loop (fully_shard per decoder layer, then the root) under",
        "# torchrun. accelerate_config.yaml is the alternative launch (accelerate's FSDP2 through the Trainer).",
        f"# Usage: ./launch.sh [train.py options], e.g. ./launch.sh {SMOKE_RUN} for a",
        "# smoke run on the sample data the bundle ships; the full run reads data.jsonl (see PLAN.md).",
        "# Environment: PYTHON, the interpreter with torch and train.py's packages (default python3);",
        f"# MAIN_PROCESS_PORT (default {DEFAULT_MAIN_PROCESS_PORT})"
        + ("; MACHINE_RANK and MAIN_PROCESS_IP on every node." if multi else "."),
        "set -euo pipefail",
        'cd "$(dirname "${BASH_SOURCE[0]}")"',
        "",
    ]
    if model_ref is None:
        lines += [
            "# No weights are known for this model: pass --model HUB_ID_OR_DIR, or --random-init",
            "# model_config.json with --tokenizer for random weights.",
        ]
    lines += [f'PORT="${{MAIN_PROCESS_PORT:-{DEFAULT_MAIN_PROCESS_PORT}}}"', 'PYTHON="${PYTHON:-python3}"', ""]
    if multi:
        lines += [
            f"# {cluster.num_nodes} nodes x {cluster.num_gpus_per_node} GPUs: run this script on every node with",
            f"# MACHINE_RANK=0..{cluster.num_nodes - 1} and MAIN_PROCESS_IP=<address of the rank-0 node>.",
            ': "${MACHINE_RANK:?set MACHINE_RANK to the rank of this node, 0 on the main node}"',
            ': "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP to the address of the rank-0 node}"',
            f"exec {LAUNCHER} --nnodes {cluster.num_nodes} --nproc_per_node {cluster.num_gpus_per_node} \\",
            '  --node_rank "$MACHINE_RANK" --master_addr "$MAIN_PROCESS_IP" --master_port "$PORT" \\',
            f'  train.py --engine fsdp2 {train_args} "$@"',
        ]
    else:
        lines += [
            f'exec {LAUNCHER} --nproc_per_node {cluster.num_gpus} --master_port "$PORT" \\',
            f'  train.py --engine fsdp2 {train_args} "$@"',
        ]
    return "\n".join(lines) + "\n"
