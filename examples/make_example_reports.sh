#!/usr/bin/env bash
# Regenerate the example reports in reports/ (run from a scratch directory; paths shown in reports are relative).
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
planner() { python -m planner "$@"; }
# 1. An estimate of a catalog model, with throughput, time, cost and the GPU comparison.
planner report --model llama-3.1-8b --gpus 8 --tokens 2000000000 --price-per-gpu-hour 2.5 --compare-gpus \
  --no-accuracy -o "$REPO/reports/estimate-llama-3.1-8b-8xh100.html"
# 2. A profile of a small run: tiny Llama-style model, 2 ranks, DeepSpeed ZeRO-2 on CPU, 4 steps.
[ -d "$REPO/profiles/tiny-llama-zero2-2ranks" ] || planner profile --model "$REPO/examples/tiny-llama.json" --gpus 2 --zero 2 \
  --precision fp32 --seq-len 128 -b 2 --steps 4 --device cpu --out "$REPO/profiles/tiny-llama-zero2-2ranks" --no-progress
planner report --profile "$REPO/profiles/tiny-llama-zero2-2ranks" --no-accuracy -o "$REPO/reports/profile-tiny-llama-zero2-2ranks.html"
# 3. A recommendation and its bundle (plan.json keeps the runners-up and rejections).
rm -rf bundle-llama-3.1-8b
planner recommend -m llama-3.1-8b -g 64 --gpus 8 --tokens 2000000000 --price-per-gpu-hour 2.5 \
  --out bundle-llama-3.1-8b  # writes plan.json beside the bundle
planner report --plan bundle-llama-3.1-8b --no-accuracy -o "$REPO/reports/recommend-llama-3.1-8b-8xh100.html"
