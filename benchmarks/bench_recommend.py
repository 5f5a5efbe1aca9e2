"""Wall time and peak memory of `planner recommend` and `planner estimate --compare-gpus`, each in a fresh
process (what a user waits for: interpreter start, imports, search, rendering).

Targets: `estimate --model llama-3.1-405b --compare-gpus` under 2 s (issue 3); `recommend` under 2 s for
every catalog model (issue 6), and at most 0.5 s of CPU for llama-3.1-8b on 8 GPUs (issue 15: CPU time, which
the machine's load changes much less than wall time); the widest search (`--max-gpus 4096`, method auto, every ZeRO stage,
offload, checkpointing and attention choice, a global batch with many divisors) and the no-fit advice
under 5 s and 500 MB (issue 9.6). Peak memory is the child's maximum resident set size (os.wait4).

Run: python benchmarks/bench_recommend.py [--repeats 3] [--json]; exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECOMMEND_S = 2.0
RECOMMEND_8B_CPU_S = 0.5
COMPARE_S = 2.0
WIDEST_S = 5.0
WIDEST_MB = 500.0


def run(args: list[str], ok_codes=(0,)) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of `python -m planner ARGS` in a fresh process. CPU time
    (user + system) is what the command costs on an idle machine; wall time also counts waiting for a CPU."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "planner", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves: wait4 reports this child's own peak
    elapsed = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if code not in ok_codes:
        raise SystemExit(f"planner {' '.join(args)} exited {code}:\n{err.decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def best_of(args: list[str], repeats: int, ok_codes=(0,)) -> tuple[float, float, float]:
    runs = [run(args, ok_codes) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs), max(r[2] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    from planner import catalog

    results = []

    def record(name, args, limit_s, limit_mb=None, ok_codes=(0,), limit_cpu_s=None):
        s, cpu, mb = best_of(args, opts.repeats, ok_codes)
        ok = s < limit_s and (limit_mb is None or mb < limit_mb) and (limit_cpu_s is None or cpu <= limit_cpu_s)
        results.append({"case": name, "seconds": round(s, 3), "cpu_seconds": round(cpu, 3),
                        "peak_rss_mb": round(mb, 1), "limit_s": limit_s, "limit_mb": limit_mb,
                        "limit_cpu_s": limit_cpu_s, "ok": ok})

    record("estimate --compare-gpus llama-3.1-405b",
           ["estimate", "--model", "llama-3.1-405b", "--compare-gpus", "--tokens", "1000000000000",
            "--price-per-gpu-hour", "2"], COMPARE_S)
    for name in catalog.model_names():
        record(f"recommend {name} 8 x h100, global batch 64",
               ["recommend", "--model", name, "--gpus", "8", "-g", "64", "--tokens", "1000000000"], RECOMMEND_S,
               ok_codes=(0, 1), limit_cpu_s=RECOMMEND_8B_CPU_S if name == "llama-3.1-8b" else None)
    widest = ["--gpus", "1", "--max-gpus", "4096", "-g", "8192", "--method", "auto", "--tokens", "1000000000000",
              "--price-per-gpu-hour", "2", "--runners-up", "20"]
    for name in ("llama-3.1-405b", "llama-3.1-8b", "mixtral-8x7b-v0.1", "deepseek-v2-lite"):
        record(f"recommend {name} widest (--max-gpus 4096, -g 8192)", ["recommend", "--model", name, *widest],
               WIDEST_S, WIDEST_MB, ok_codes=(0, 1))
    record("recommend llama-3.1-405b on t4 (no fit: advice search)",
           ["recommend", "--model", "llama-3.1-405b", "--gpu", "t4-16gb", "--precision", "fp16-mixed", "-g", "8",
            "--method", "full", "--seq-len", "8192"], WIDEST_S, WIDEST_MB, ok_codes=(1,))
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["case"]) for r in results)
        for r in results:
            flag = "ok" if r["ok"] else "SLOW"
            cpu_limit = f" (limit {r['limit_cpu_s']:g} s)" if r["limit_cpu_s"] is not None else ""
            print(f"{r['case']:<{width}}  wall {r['seconds']:6.3f} s  cpu {r['cpu_seconds']:6.3f} s{cpu_limit}  "
                  f"{r['peak_rss_mb']:7.1f} MB  {flag}")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times grow with load)")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
