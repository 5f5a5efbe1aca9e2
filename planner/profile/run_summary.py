"""What a profile says about its run as a whole: the record of the run and its overall status.

``run_meta``: the command, the model and train specs, the workload as it runs (engine, DeepSpeed config,
optimizer, checkpointing, loss), versions, hardware and git commit, which store.assemble writes into the
profile. ``overall_status``: the run's status and message from its ranks' (the earliest out-of-memory error
or failure is the cause; an interrupt is said as such).
"""

from __future__ import annotations

import time

from planner.profile import meta as meta_mod
from planner.profile.job import Job
from planner.specs import ModelSpec, TrainSpec, train_spec_to_dict


def run_meta(job: Job, model: ModelSpec, train: TrainSpec, num_nodes: int, gpu: str | None) -> dict:
    from planner.profile.optim import deepspeed_config

    return {
        "schema": 1,
        "created_unix_s": int(time.time()),
        "command": meta_mod.command_line(),
        "model": {"name": model.name, "source": model.source, "config": model.config},
        "train": train_spec_to_dict(train),
        "cluster": {"gpu": gpu, "num_gpus": job.num_ranks, "num_nodes": num_nodes, "all_ranks_on_this_machine": True},
        "device": job.device,
        "steps": job.steps,
        "seed": job.seed,
        "weights": job.weights,
        "data": job.data,
        "tokenizer": job.tokenizer,
        "fail_at": job.fail_at,
        "workload": {
            "engine": "deepspeed" if train.uses_deepspeed else "fsdp2" if train.uses_fsdp2 else (
                "ddp" if job.num_ranks > 1 else "single"),
            "deepspeed_config": deepspeed_config(train, job.num_ranks, model.hidden_size) if train.uses_deepspeed else None,
            "master_weights": train.precision.has_master_weights,
            "optimizer_impl": "torch foreach" if train.optimizer.value in ("adamw", "sgd") else train.optimizer.value,
            "checkpointing": "non-reentrant, every decoder layer" if train.grad_checkpointing else None,
            "loss": "transformers ForCausalLMLoss on the logits, model output dropped before backward",
        },
        "versions": meta_mod.versions(),
        "hardware": meta_mod.hardware(job.device),
        "git_commit": meta_mod.git_commit(),
    }


def overall_status(ranks: list[dict], interrupted: str | None, num_ranks: int) -> tuple[str, str]:
    """``interrupted``: the signal that stopped the run ("SIGINT" or "SIGTERM"), None when none did."""
    if interrupted:
        told = [r["message"] for r in ranks if r["status"] == "interrupted" and interrupted in r["message"]]
        return "interrupted", (told[0] if told else f"the run was interrupted ({interrupted}) before it finished.")
    bad = [r for r in ranks if r["status"] != "ok"]
    if not bad and len(ranks) == num_ranks:
        return "ok", ""
    # The root cause is the earliest out-of-memory error or failure; the others were stopped because of it.
    causes = [r for r in bad if r["status"] in ("oom", "failed")] or bad
    causes.sort(key=lambda r: (r.get("identity", {}).get("failed_at_unix_ns") or 2**63, r["rank"]))
    first = causes[0]
    status = first["status"] if first["status"] in ("oom", "failed") else "failed"
    return status, first["message"]
