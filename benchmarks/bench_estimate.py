"""Cold `planner estimate` vs the approach of accelerate's estimator, each in a fresh process.

accelerate's `accelerate estimate-memory` builds the model on the meta device
(init_empty_weights + AutoModelForCausalLM.from_config) and sums sizes with calculate_maximum_sizes.
Run: python benchmarks/bench_estimate.py [--model llama-3.1-8b] [--repeats 5] [--json]
Targets (issue 15, on an idle 2-core machine): the full table with fit limits at most 0.5 s cold and at least
10x faster than accelerate's approach in the same run (issue 2 asked for 1.0 s and 3x); `planner estimate
--model llama-3.1-405b --compare-gpus` at most 0.7 s (issue 3 asked for 2 s). Medians of ``--repeats`` runs,
the three commands interleaved so that a load that comes and goes hits them alike. Wall time grows with the
machine's load (the load average is printed); CPU time (user + system of the child) much less so.
Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TABLE_S = 0.5
SPEEDUP = 10.0
COMPARE_S = 0.7

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


def _time(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``cmd`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves: wait4 reports this child's own CPU time
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = ROOT / "planner" / "catalog" / "models" / f"{args.model}.json"
    cmds = {
        "planner": [sys.executable, "-m", "planner", "estimate", "--model", args.model, "--gpus", "8"],
        "accelerate": [sys.executable, "-c", ACCELERATE_CODE, str(cfg)],
        "compare": [sys.executable, "-m", "planner", "estimate", "--model", "llama-3.1-405b", "--compare-gpus"],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            runs[name].append(_time(cmd))

    def median(name: str, i: int) -> float:
        return round(statistics.median(r[i] for r in runs[name]), 3)

    result = {
        "model": args.model,
        "repeats": args.repeats,
        "planner_estimate_full_table_s": median("planner", 0),
        "planner_estimate_full_table_cpu_s": median("planner", 1),
        "accelerate_meta_device_s": median("accelerate", 0),
        "speedup": round(median("accelerate", 0) / median("planner", 0), 2),
        "planner_compare_gpus_405b_s": median("compare", 0),
        "planner_compare_gpus_405b_cpu_s": median("compare", 1),
        "load_average": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    result["ok"] = (result["planner_estimate_full_table_s"] <= TABLE_S and result["speedup"] >= SPEEDUP
                    and result["planner_compare_gpus_405b_s"] <= COMPARE_S)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"planner estimate --model {args.model} --gpus 8 (full table, fit limits): "
              f"{result['planner_estimate_full_table_s']:.3f} s (cpu {result['planner_estimate_full_table_cpu_s']:.3f} s),"
              f" target {TABLE_S} s")
        print(f"accelerate meta-device estimate: {result['accelerate_meta_device_s']:.3f} s; planner is "
              f"{result['speedup']:.1f}x faster, target {SPEEDUP:g}x")
        print(f"planner estimate --model llama-3.1-405b --compare-gpus: {result['planner_compare_gpus_405b_s']:.3f} s "
              f"(cpu {result['planner_compare_gpus_405b_cpu_s']:.3f} s), target {COMPARE_S} s")
        print(f"medians of {args.repeats}; load average {result['load_average']} on {result['cpus']} CPUs "
              "(wall times grow with load)")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
