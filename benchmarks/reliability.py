"""Run the reliability suites (issue 9) and write reports/reliability.md: what was tried, what failed.

    python benchmarks/reliability.py          # the CI sizes: 1,000 fuzz examples, the CI fault subset
    python benchmarks/reliability.py --full   # on demand: 10,000 fuzz examples, PLANNER_FAULTS=full

It runs tests/test_bad_inputs.py, test_cli_fuzz.py, test_fault_injection.py and test_safety.py under pytest
with PLANNER_RELIABILITY_DIR set (the fuzz and fault tests write their counts there), reads pytest's JUnit
XML for every case's outcome, and writes the report. Known defects are strict xfails in the tests, listed
with their reasons; DEFECTS_FIXED below records what these suites found that has since been fixed. Exit
status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = {
    "tests/test_bad_inputs.py": "bad-input corpus (forked real entry point, 5 s and memory cap per case)",
    "tests/test_cli_fuzz.py": "CLI fuzzing (hypothesis, grammar read from the typer app)",
    "tests/test_fault_injection.py": "fault injection for `planner profile`",
    "tests/test_safety.py": "safety: network, remote code, --out, shell quoting",
}
# Found by these suites and fixed since (file: input -> what happened).
DEFECTS_FIXED = [
    "planner/cli/report_cmd.py: `planner report -m gpt2 -s 512 -o r.html` -> internal error (AttributeError: "
    "estimate_cmd has no `_with_extras`, renamed `_with_throughput`); fixed in report_cmd.py.",
    "planner/profile/launcher.py: `planner profile --out RO_DIR/p` (read-only parent) -> internal error "
    "(PermissionError creating the staging directory); now one sentence naming the directory.",
    "planner/profile/launcher.py: a full disk while the profile is written (RLIMIT_FSIZE: EFBIG) -> internal "
    "error (OSError from pyarrow); now one sentence, nothing kept.",
    "planner/profile/runner.py: an out-of-memory error under a memory cap (RLIMIT_AS) -> internal error "
    "(MemoryError in the recorder's stop, ImportError of pandas in _finish), no profile; now an 'oom' profile.",
    "planner/cli/validate_cmd.py: the reproduce command recorded by `planner validate` joined its arguments "
    "with spaces, unquoted; now shlex.join.",
    "planner/models.py: `--model FIFO` blocked forever; `--model /dev/zero` read until memory ran out; a "
    "config.json that is not UTF-8 (AttributeError), nested 100,000 deep (RecursionError), with "
    "max_position_embeddings 'abc', num_local_experts 'eight', gpt2 n_inner 'x' (ValueError) or n_positions "
    "null (TypeError) -> internal errors; max_position_embeddings -5 named the wrong value; num_local_experts -4 "
    "(negative parameter count) and num_experts_per_tok > num_local_experts were accepted; `--model ../no/such` "
    "-> HFValidationError from huggingface_hub (fuzzing). All now one sentence, exit 1.",
    "planner/estimate (tape.py): model_type 'mamba' -> internal error (AttributeError); now refused.",
    "planner/specs.py, estimate_cmd.py: --lora-alpha -1 accepted; --compare-gpus ignored an unknown --gpu.",
    "planner/profile/launcher.py: `profile --data DIR` failed inside the rank, leaving a 'failed' profile and "
    "two stderr lines; now refused up front.",
    "planner/profile/store.py: `profile --out DIR --force` deleted any directory, not only a profile (the "
    "user's files were lost); --force now replaces only an empty directory or an earlier profile.",
    "planner/validate: `validate --out FILE` / `--cache FILE` -> internal error (FileExistsError) after "
    "creating profiles/validation; now refused up front.",
]


def _junit(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """suite file -> [(test id, outcome, message)] from pytest's JUnit XML."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:300]
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfailed" if "xfail" in kind else "skipped"
                message = child.get("message") or ""
        out.setdefault(module, []).append((case.get("name", ""), outcome, message))
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _render(results, fuzz, faults, *, full: bool, wall_s: float, code: int) -> str:
    lines = [
        "# Reliability report (issue 9)",
        "",
        f"Generated by `python benchmarks/reliability.py{' --full' if full else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_git_commit()}, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{wall_s / 60:.1f} minutes, pytest exit status {code}.",
        "",
        "| suite | cases | passed | known defects (strict xfail) | skipped | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    xfails: list[str] = []
    failures: list[str] = []
    for suite, what in SUITES.items():
        cases = results.get(suite, [])
        c = Counter(o for _, o, _ in cases)
        lines.append(f"| {what} | {len(cases)} | {c['passed']} | {c['xfailed']} | {c['skipped']} | {c['failed']} |")
        xfails += [f"- `{Path(suite).name}::{name}`: {msg.removeprefix('reason: ')}" for name, o, msg in cases if o == "xfailed"]
        failures += [f"- `{Path(suite).name}::{name}`: {msg}" for name, o, msg in cases if o == "failed"]
    if fuzz:
        by = fuzz.get("by_outcome", {})
        per_code = Counter()
        for key, n in by.items():
            per_code[key.rsplit(" ", 1)[-1]] += n
        lines += [
            "",
            f"**Fuzzing**: {fuzz['examples']:,} random invocations in {fuzz['wall_s']:.0f} s (requested "
            f"{fuzz['requested']:,}); exit 0: {per_code['0']:,}, exit 1: {per_code['1']:,}, exit 2: {per_code['2']:,}; "
            f"distinct failures: {len(fuzz.get('failures', {}))}; known defects hit: "
            + (", ".join(f"{n} x {bug}" for bug, n in fuzz.get("known_bugs_hit", {}).items()) or "none")
            + ".",
        ]
        if fuzz.get("seconds_by_command"):
            lines += ["", "Fuzz seconds by command: "
                      + ", ".join(f"{k} {v:.0f} s" for k, v in fuzz["seconds_by_command"].items()) + "."]
        for sig, info in fuzz.get("failures", {}).items():
            failures.append(f"- fuzz: {sig} ({info['count']} examples), e.g. `{info['example'].splitlines()[0]}`")
    if faults:
        kinds = Counter(f["kind"] for f in faults)
        bad = [f for f in faults if f["problems"]]
        lines += ["", f"**Faults injected**: {len(faults)} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
                  f"with a problem: {len(bad)}."]  # fmt: skip
        statuses = Counter(f"{f['kind']} -> {f['status']}" for f in faults)
        lines += ["", "| fault -> resulting profile | count |", "|---|---:|"]
        lines += [f"| {k} | {n} |" for k, n in sorted(statuses.items())]
        slowest = max((f["after_fault_s"] for f in faults), default=0)
        lines += ["", f"Longest time from a fault to the end of the command: {slowest:.1f} s (bound: 30 s)."]
    lines += ["", "## Known defects (open)", ""] + (xfails or ["None."])
    lines += ["", "## Failures in this run", ""] + (failures or ["None."])
    lines += ["", "## Found by these suites and fixed", ""] + [f"- {d}" for d in DEFECTS_FIXED]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10,000 fuzz examples and the full fault plan")
    parser.add_argument("--out", default=str(ROOT / "reports" / "reliability.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="planner-reliability-") as tmp:
        env = {**os.environ, "PLANNER_RELIABILITY_DIR": tmp, "HF_HUB_OFFLINE": "1"}
        env["PLANNER_FUZZ_EXAMPLES"] = "10000" if args.full else env.get("PLANNER_FUZZ_EXAMPLES", "1000")
        if args.full:
            env["PLANNER_FAULTS"] = "full"
        junit = Path(tmp) / "junit.xml"
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                               *SUITES], cwd=ROOT, env=env).returncode  # fmt: skip
        wall = time.monotonic() - started
        results = _junit(junit) if junit.exists() else {}
        fuzz = json.loads((Path(tmp) / "fuzz.json").read_text()) if (Path(tmp) / "fuzz.json").exists() else None
        faults = json.loads((Path(tmp) / "faults.json").read_text()) if (Path(tmp) / "faults.json").exists() else []
    text = _render(results, fuzz, faults, full=args.full, wall_s=wall, code=code)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
