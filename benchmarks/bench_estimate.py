"""Cold `planner estimate` vs the approach of accelerate's estimator, each in a fresh process.

accelerate's `accelerate estimate-memory` builds the model on the meta device
(init_empty_weights + AutoModelForCausalLM.from_config) and sums sizes with calculate_maximum_sizes.
Run: python benchmarks/bench_estimate.py [--model llama-3.1-8b] [--repeats 3]
Targets (issue 2): planner under 1.0 s cold and at least 3x faster. Also times
`planner estimate --model llama-3.1-405b --compare-gpus` (issue 3: under 2 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ACCELERATE_CODE = """
import json, sys
from accelerate import init_empty_weights
from accelerate.utils import calculate_maximum_sizes
from transformers import AutoConfig, AutoModelForCausalLM
cfg = json.load(open(sys.argv[1]))
config = AutoConfig.for_model(**cfg)
with init_empty_weights():
    model = AutoModelForCausalLM.from_config(config)
total, largest = calculate_maximum_sizes(model)
print(total, largest)
"""


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = ROOT / "planner" / "catalog" / "models" / f"{args.model}.json"
    planner_cmd = [sys.executable, "-m", "planner", "estimate", "--model", args.model, "--gpus", "8"]
    accel_cmd = [sys.executable, "-c", ACCELERATE_CODE, str(cfg)]
    compare_cmd = [sys.executable, "-m", "planner", "estimate", "--model", "llama-3.1-405b", "--compare-gpus"]
    planner_s = [_time(planner_cmd) for _ in range(args.repeats)]
    accel_s = [_time(accel_cmd) for _ in range(args.repeats)]
    compare_s = [_time(compare_cmd) for _ in range(args.repeats)]
    result = {
        "model": args.model,
        "planner_estimate_full_table_s": round(statistics.median(planner_s), 3),
        "accelerate_meta_device_s": round(statistics.median(accel_s), 3),
        "speedup": round(statistics.median(accel_s) / statistics.median(planner_s), 2),
        "planner_compare_gpus_405b_s": round(statistics.median(compare_s), 3),
    }
    print(json.dumps(result, indent=2))
    ok = result["planner_estimate_full_table_s"] < 1.0 and result["speedup"] >= 3
    ok = ok and result["planner_compare_gpus_405b_s"] < 2.0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
