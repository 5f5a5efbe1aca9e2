"""launch.sh: the `accelerate launch` command of a plan, one node active, the multi-node form in comments.

Every value that came from the user (model path or hub id, dataset path, tokenizer) is written with
``shlex.quote``, so spaces, quotes, ``$()`` and backticks reach train.py as literal text. The script
changes to its own directory first, so the relative config paths work from anywhere (a local model path is
written absolute for the same reason). accelerate runs as ``$PYTHON -m accelerate.commands.launch`` (PYTHON
defaults to python3), so no ``accelerate`` needs to be on PATH and train.py runs under the interpreter that
has accelerate; without one, the script says so in one line.
"""

from __future__ import annotations

import shlex

from planner.emit.accelerate_config import DEFAULT_MAIN_PROCESS_PORT
from planner.emit.sample_data import SAMPLE_DATASET
from planner.specs import Cluster

CONFIG_FILE = "accelerate_config.yaml"
SMOKE_RUN = f"--max-steps 2 --dataset {SAMPLE_DATASET}"
LAUNCHER = '"$PYTHON" -m accelerate.commands.launch'
_CHECK_PYTHON = (
    'if ! "$PYTHON" -c \'import importlib.util, sys; sys.exit(importlib.util.find_spec("accelerate") is None)\' '
    ">/dev/null 2>&1; then",
    '  echo "launch.sh: $PYTHON cannot run accelerate; activate the environment that has it (pip install '
    'accelerate) or set PYTHON=/path/to/that/python." >&2',
    "  exit 1",
    "fi",
)


def _comment_safe(text: str) -> str:
    """Text for a ``#`` comment line: one line, no control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _train_args(model_ref: str | None, dataset: str, tokenizer: str | None) -> list[str]:
    args = []
    if model_ref is not None:
        args += ["--model", model_ref]
    if tokenizer is not None:
        args += ["--tokenizer", tokenizer]
    args += ["--dataset", dataset]
    return args


def render_launch_sh(
    *,
    label: str,
    cluster: Cluster,
    model_ref: str | None,
    dataset: str,
    tokenizer: str | None = None,
) -> str:
    """The bash script. Extra arguments given to launch.sh are passed on to train.py ("$@")."""
    train_args = " ".join(shlex.quote(a) for a in _train_args(model_ref, dataset, tokenizer))
    multi = cluster.num_nodes > 1
    lines = [
        "#!/usr/bin/env bash",
        "# Launch the plan written by planner (see PLAN.md):",
        f"#   {_comment_safe(label)}",
        f"# Usage: ./launch.sh [train.py options], e.g. ./launch.sh {SMOKE_RUN} for a",
        "# smoke run on the sample data the bundle ships; the full run reads data.jsonl (see PLAN.md).",
        "# Environment: PYTHON, the interpreter with accelerate and train.py's packages (default python3);",
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
    node_flags = (
        f"--num_machines {cluster.num_nodes} --num_processes {cluster.num_gpus} "
        '--machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$PORT"'
    )
    if multi:
        lines += [
            f"# {cluster.num_nodes} nodes x {cluster.num_gpus_per_node} GPUs: run this script on every node with",
            f"# MACHINE_RANK=0..{cluster.num_nodes - 1} and MAIN_PROCESS_IP=<address of the rank-0 node>.",
            ': "${MACHINE_RANK:?set MACHINE_RANK to the rank of this node, 0 on the main node}"',
            ': "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP to the address of the rank-0 node}"',
            *_CHECK_PYTHON,
            f"exec {LAUNCHER} --config_file {CONFIG_FILE} \\",
            f"  {node_flags} \\",
            f'  train.py {train_args} "$@"',
        ]
    else:
        lines += [
            *_CHECK_PYTHON,
            f'exec {LAUNCHER} --config_file {CONFIG_FILE} --main_process_port "$PORT" \\',
            f'  train.py {train_args} "$@"',
            "",
            "# The same plan on several nodes (K nodes x G GPUs, N = K x G processes in all): on every node run",
            f"#   {LAUNCHER} --config_file {CONFIG_FILE} \\",
            "#     --num_machines K --num_processes N --machine_rank \"$MACHINE_RANK\" \\",
            '#     --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$PORT" \\',
            f'#     train.py {_comment_safe(train_args)} "$@"',
            "# with MACHINE_RANK=0 on the main node and 1..K-1 on the others, MAIN_PROCESS_IP its address.",
            "# More processes change the global batch (micro-batch x accumulation x N) and the memory per GPU",
            "# under ZeRO: re-plan with planner recommend --gpus N --nodes K.",
        ]
    return "\n".join(lines) + "\n"
