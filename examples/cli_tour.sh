#!/usr/bin/env bash
# A tour of the CLI. Run from the repository root after `bash scripts/setup.sh` (or use scripts/planner).
set -euo pipefail
cd "$(dirname "$0")/.."
P="bash scripts/planner"
$P models
$P estimate --model llama-3.1-8b --gpus 8 --seq-len 4096 --micro-batch 2 --grad-checkpointing
$P estimate --model llama-3.1-70b --method qlora --gpus 1 --seq-len 1024 --json | head -40
$P estimate --model llama-3.1-8b --compare-gpus --tokens 1000000000 --price-per-gpu-hour 2.5
out=$(mktemp -d)/bundle
$P recommend --model llama-3.1-8b --gpus 8 --seq-len 4096 --global-batch-size 64 --out "$out"
ls "$out"
$P report --model llama-3.1-8b --gpus 8 -o "$(dirname "$out")/estimate.html"
