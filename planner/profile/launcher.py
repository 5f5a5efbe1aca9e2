"""Run a profile: one rank in this process, or N ranks under torchrun; merge, publish, report the status.

A single rank without ZeRO runs in-process. Anything distributed (``--gpus N`` data parallel, or any ZeRO
stage, even on one rank) runs under the standard launcher, ``python -m torch.distributed.run``, rendezvous
on 127.0.0.1 with a free port, each worker in its own session (torchrun's default). Ctrl-C (SIGINT) or SIGTERM
to the parent is forwarded to torchrun, which forwards it to the workers; every worker still writes what it
recorded. Once torchrun exits, any worker that is still alive (recorded by its process id) is killed, so no
rank is left behind. If the parent itself is killed (SIGKILL, the OOM killer), torchrun and the workers die
with it (planner/profile/lifeline.py), and the hidden directory it was assembling is removed by the next
run into the same parent directory. Start-up (rendezvous, DeepSpeed op builds) has a time limit
(planner/profile/startup.py).

``torchrun.py`` starts and watches torchrun; ``run_summary.py`` holds the run's record and its overall status.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError
from planner.profile.attribution import STEP_PHASES
from planner.profile.progress import ProgressDisplay
from planner.profile.run_summary import overall_status, run_meta
from planner.profile.runner import Job, Terminated, run_rank
from planner.profile.store import assemble, check_target, publish, staging_dir
from planner.profile.torchrun import INTERRUPT_GRACE_S, read_rank, run_torchrun
from planner.specs import ModelSpec, TrainSpec, train_spec_to_dict
from planner.units import MIB, fmt_gib

__all__ = ["FAULT_PHASES", "INTERRUPT_GRACE_S", "PROCESS_BASELINE_BYTES", "HostMemory", "check_host_memory",
           "check_peft_accepts", "clean_stale_staging", "default_slug", "host_memory_needed", "mem_available_bytes",
           "parse_fail_at", "resolve_device", "run_profile"]

FAULT_PHASES = ("init", "build", "wrap", *STEP_PHASES)


def resolve_device(device: str, num_ranks: int) -> str:
    import torch

    device = device.lower()
    if device not in ("auto", "cpu", "cuda"):
        raise PlannerError(f"--device {device!r} is not valid; choose auto, cpu or cuda.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PlannerError("--device cuda was asked for but torch sees no CUDA GPU here; use --device cpu.")
        if torch.cuda.device_count() < num_ranks:
            raise PlannerError(
                f"--gpus {num_ranks} needs {num_ranks} CUDA GPUs on this machine, found {torch.cuda.device_count()}."
            )
    return device


def parse_fail_at(value: str | None) -> str | None:
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].lstrip("-").isdigit() or parts[2] not in FAULT_PHASES:
        raise PlannerError(
            f"--fail-at {value!r} is not RANK:STEP:PHASE with a phase among {', '.join(FAULT_PHASES)} "
            "(use step -1 for setup phases)."
        )
    return value


def default_slug(model: ModelSpec, train: TrainSpec, num_ranks: int, device: str) -> str:
    name = model.name.replace("/", "--").replace(" ", "_")
    parts = [name, train.method.value, engine_slug(train), f"g{num_ranks}", f"b{train.micro_batch}",
             f"s{train.seq_len}", train.precision.value]  # fmt: skip
    if train.grad_checkpointing:
        parts.append("ckpt")
    if train.selective_ac:
        parts.append("sac-" + train.selective_ac)
    if train.offload.value != "none":
        parts.append("off-" + train.offload.value.replace("+", "-"))
    parts.append(device)
    return "-".join(parts)


def engine_slug(train: TrainSpec) -> str:
    """``z2`` (DDP: ``z0``), or ``fsdp2`` (``fsdp2-nr``: no reshard; ``-cpuoff``: CPU offload)."""
    if not train.uses_fsdp2:
        return f"z{train.zero_stage}"
    cfg = train.parallelism.fsdp_config
    return ("fsdp2" + ("" if cfg.reshard_after_forward else "-nr") + ("-cpuoff" if cfg.cpu_offload else "")
            + (f"-hsdp{cfg.replicate_degree}" if cfg.replicate_degree > 1 else ""))


# Resident memory of a rank's process before its model exists: Python with torch, transformers, peft and
# pandas imported (DeepSpeed too) measured 508-538 MiB (ru_maxrss; torch 2.13.0+cpu, transformers 5.23.0).
# A floor: the profiler's records and allocator slack come on top, so only runs that cannot fit are refused.
PROCESS_BASELINE_BYTES = 512 * MIB


@dataclass(frozen=True)
class HostMemory:
    """What a profile needs in host RAM: every rank's estimated peak (CPU runs), its process, offloaded states."""

    num_ranks: int
    per_rank_bytes: int  # planner's estimate of one rank's allocated peak (0 on CUDA: it lives on the GPU)
    process_bytes: int  # PROCESS_BASELINE_BYTES per rank
    offload_bytes: int  # ZeRO-offloaded states of all ranks (host RAM on any device)

    @property
    def total_bytes(self) -> int:
        return self.num_ranks * (self.per_rank_bytes + self.process_bytes) + self.offload_bytes


def mem_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_memory_needed(model: ModelSpec, train: TrainSpec, num_ranks: int, device: str) -> HostMemory | None:
    """planner's estimate of the host RAM this profile needs, all ranks on this machine; None when the
    estimator refuses the configuration or fails (the run is then not checked: profiling is how the estimator
    is checked, so a defect in it must not stop a profile; a failure is reported on stderr)."""
    from planner.catalog import DEFAULT_GPU, gpu
    from planner.specs import Cluster

    try:
        from planner.estimate.core import estimate

        cluster = Cluster(gpu=gpu(DEFAULT_GPU), num_gpus=num_ranks, num_nodes=1)
        est = estimate(model, train, cluster, device="cpu" if device == "cpu" else "cuda", allow_longer=True)
    except PlannerError:
        return None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        print(f"warning: the host RAM check was skipped: the estimator failed ({type(exc).__name__}: {exc}).",
              file=sys.stderr)  # fmt: skip
        return None
    per_rank = est.device_bytes if device == "cpu" else 0
    return HostMemory(num_ranks, per_rank, PROCESS_BASELINE_BYTES, est.cpu_bytes_per_node)


def check_peft_accepts(model: ModelSpec, train: TrainSpec) -> None:
    """Refuse up front, in one sentence, a LoRA run peft would refuse once the ranks are up: LoRA dropout on a
    mixture of experts' parameter targets (lora.ParamWrapper; planner.estimate.count.params.check_lora_dropout)."""
    from planner.specs import Method

    if train.method is Method.FULL or not train.lora.dropout or not model.is_moe:
        return
    from planner.estimate.count.params import check_lora_dropout, count_params

    check_lora_dropout(count_params(model), train.lora)


def check_host_memory(model: ModelSpec, train: TrainSpec, num_ranks: int, device: str) -> None:
    """Refuse, in one sentence, a profile whose estimated host RAM exceeds MemAvailable: it would run for
    minutes before failing (or swap, or wake the OOM killer)."""
    available = mem_available_bytes()
    need = host_memory_needed(model, train, num_ranks, device) if available is not None else None
    if need is None or available is None or need.total_bytes <= available:
        return
    ranks = f" x {num_ranks} ranks" if num_ranks > 1 else ""
    parts = []
    if need.per_rank_bytes:
        parts.append(f"{fmt_gib(need.per_rank_bytes, 1)} per rank by planner's estimate{ranks}")
    parts.append(f"{fmt_gib(need.process_bytes, 1)} for each rank's process")
    if need.offload_bytes:
        parts.append(f"{fmt_gib(need.offload_bytes, 1)} of offloaded states")
    raise PlannerError(
        f"this profile needs about {fmt_gib(need.total_bytes, 1)} of host RAM ({' plus '.join(parts)}) but "
        f"only {fmt_gib(available, 1)} is available (MemAvailable in /proc/meminfo); choose a smaller model, "
        "--micro-batch or --seq-len, or pass --no-ram-check to run it anyway."
    )


_HIDDEN = re.compile(r"^\..+\.(?:partial|old)-(\d+)$")  # store.py's staging and set-aside names: .NAME.partial-PID


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove the hidden directories (``.NAME.partial-PID``, ``.NAME.old-PID``) that a killed run left in
    ``parent``: those whose process is gone. Returns what was removed."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _HIDDEN.match(entry.name)
        if not m or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a profile is assembled: SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main thread, so
    the run is stopped and cleaned up as after Ctrl-C instead of the process vanishing mid-write. A handler
    someone else installed is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_profile(
    model: ModelSpec,
    train: TrainSpec,
    *,
    num_gpus: int,
    num_nodes: int = 1,
    steps: int = 3,
    device: str = "auto",
    out: Path,
    force: bool = False,
    seed: int = 0,
    weights: str | None = None,
    data: str | None = None,
    tokenizer: str | None = None,
    fail_at: str | None = None,
    torch_categories: bool = False,
    gpu: str | None = None,
    show_progress: bool = True,
    ram_check: bool = True,
) -> tuple[str, str, Path]:
    """Profile one configuration; returns (status, message, profile directory).

    With ``ram_check``, a run whose estimated host RAM exceeds MemAvailable is refused before it starts."""
    if steps < 1:
        raise PlannerError(f"--steps must be at least 1, got {steps}.")
    if num_gpus < 1:
        raise PlannerError(f"--gpus must be at least 1, got {num_gpus}.")
    for flag, value in (("--weights", weights), ("--data", data), ("--tokenizer", tokenizer)):
        if value is not None and not Path(value).exists():
            raise PlannerError(f"{flag} {value!r} does not exist.")
    if data is not None and not Path(data).is_file():
        raise PlannerError(f"--data {data!r} is a directory; give a JSONL file with a text field.")
    check_target(out, force)
    resolved = resolve_device(device, num_gpus)
    if train.task.grpo is not None:  # TRL's GRPOTrainer, recorded as a command (trl_grpo.py)
        from planner.profile.trl_grpo import run_grpo_profile

        return run_grpo_profile(model, train, num_gpus=num_gpus, steps=steps, device=resolved, out=out, force=force)
    if not train.task.is_default:  # post-training: TRL's own trainer, recorded as a command (trl_dpo.py)
        from planner.profile.trl_dpo import run_dpo_profile

        return run_dpo_profile(model, train, num_gpus=num_gpus, steps=steps, device=resolved, out=out, force=force)
    if torch_categories and resolved != "cpu":
        raise PlannerError("--torch-categories reads the CPU profiler and works only with --device cpu.")
    from planner.estimate.count.causal import refuse_non_causal

    refuse_non_causal(model)  # transformers would build an encoder as a causal LM head (BertLMHeadModel)
    check_peft_accepts(model, train)
    from planner.profile.loss_run import check_loss_runs

    check_loss_runs(train, resolved)
    if ram_check:
        check_host_memory(model, train, num_gpus, resolved)
    job = Job(
        model_name=model.name, model_config=model.config, train=train_spec_to_dict(train), num_ranks=num_gpus,
        device=resolved, steps=steps, seed=seed, weights=weights, data=data,
        tokenizer=tokenizer, fail_at=parse_fail_at(fail_at), torch_categories=torch_categories,
    )  # fmt: skip
    meta = run_meta(job, model, train, num_nodes, gpu)
    staging = staging_dir(out)
    clean_stale_staging(out.parent)
    with _sigterm_interrupts():
        return _run_into(job, meta, model, train, staging, out, force, show_progress)


def _run_into(job: Job, meta: dict, model: ModelSpec, train: TrainSpec, staging: Path, out: Path, force: bool,
              show_progress: bool) -> tuple[str, str, Path]:
    num_gpus, steps = job.num_ranks, job.steps
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    except OSError as exc:
        raise PlannerError(
            f"cannot create the profile directory in {str(out.parent)!r}: {exc.strerror or exc}; "
            "choose a writable --out."
        ) from None
    try:
        with ProgressDisplay(steps, job.device, enabled=show_progress) as display:
            if num_gpus == 1 and not (train.uses_deepspeed or train.uses_fsdp2):
                ranks = [run_rank(job, 0, 0, staging / "ranks", progress=display.update)]
                interrupted = None
                if ranks[0]["status"] == "interrupted":
                    interrupted = "SIGTERM" if "SIGTERM" in ranks[0]["message"] else "SIGINT"
            else:
                interrupted, code = run_torchrun(job, staging, display)
                ranks = [read_rank(staging / "ranks", r, code) for r in range(num_gpus)]
            status, message = overall_status(ranks, interrupted, num_gpus)
            display.finish(min(r.get("steps_completed", 0) for r in ranks))
        (staging / "job.json").unlink(missing_ok=True)
        extra = ["launcher.log"] if (staging / "launcher.log").exists() else []
        assemble(staging, meta, ranks, status, message, num_gpus, extra_files=extra)
        publish(staging, out, force)
    except OSError as exc:  # a full disk, a quota, a directory that went read-only
        shutil.rmtree(staging, ignore_errors=True)
        raise PlannerError(
            f"could not write the profile to {str(out)!r} ({exc.strerror or type(exc).__name__}); nothing was kept."
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return status, message, out
