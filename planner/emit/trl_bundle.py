"""The run bundle of a ``--task dpo`` or ``--task grpo`` plan: a train.py that trains with TRL 1.16's own
``DPOTrainer`` or ``GRPOTrainer`` (trl_script/), the launch script, PLAN.md, sample data; text only.

``render_trl_files`` is called by bundle.render_bundle for every task but sft, with the pieces it already made (the
weights reference, the label, the accelerate config and launch.sh, which start train.py the same way). What the
planned step is, and which TRL settings give it:

- DPO: ``DPOConfig(beta, loss_type, max_length=--seq-len, precompute_ref_log_probs)``; the reference is TRL's own
  (``DPOTrainer.__init__``: a frozen copy loaded from the policy's path for full fine-tuning, none for a PEFT policy,
  whose adapter is disabled for the reference pass, none with precomputed log-probabilities).
- GRPO: ``GRPOConfig(num_generations, max_completion_length, beta, use_vllm, vllm_mode="colocate",
  vllm_gpu_memory_utilization, vllm_enable_sleep_mode)`` (trl/trainer/grpo_config.py).
- Both: the planned micro-batch, accumulation, checkpointing, precision (the weights' dtype as the SFT bundle
  loads them) and torch's AdamW in the planned implementation (``planned_trainer``, as the profiler runs it).

What the TRL script does not run is refused in one sentence: FSDP2's own loop, a loss recipe other than TRL's
(its fused LM head is the task's), packing, selective checkpointing, activation offloading, the optimizer in
backward and torch.compile.
"""

from __future__ import annotations

import json
import pprint
import shlex
from typing import Any

from planner.emit.accelerate_config import render_accelerate_yaml
from planner.emit.ds_config import MAX_GRAD_NORM, deepspeed_config
from planner.emit.launch import render_launch_sh
from planner.emit.plan_md import _md, profile_argv, render_plan_md
from planner.emit.sample_data import SAMPLE_DATASET, sample_texts
from planner.emit.trl_script import PLACEHOLDER, TEMPLATE
from planner.errors import PlannerError
from planner.estimate.result import Estimate
from planner.plan.generation_choice import generation_advice
from planner.specs import Cluster, Loss, Method, ModelSpec, Task, TrainSpec, train_spec_to_dict

# trl/trainer/dpo_config.py DPOConfig: beta 0.1, loss_type ["sigmoid"] (the planner spec keeps neither: they change
# only [pairs]-sized tensors of the loss)
DPO_BETA = 0.1
DPO_LOSS_TYPE = "sigmoid"

_REFUSED = (
    (lambda t: t.uses_fsdp2, "FSDP2's own fully_shard loop"),
    (lambda t: t.loss.kind is not Loss.STANDARD, "a loss recipe (TRL's fused LM head is the task's loss)"),
    (lambda t: t.packing, "sequence packing"),
    (lambda t: bool(t.selective_ac), "selective activation checkpointing"),
    (lambda t: t.activation_offload, "activation offloading"),
    (lambda t: t.optimizer_in_backward, "the optimizer in backward"),
    (lambda t: t.compile, "torch.compile"),
)


def check_trl_bundle(train: TrainSpec) -> None:
    for refused, what in _REFUSED:
        if refused(train):
            raise PlannerError(f"the --task {train.task.kind.value} bundle trains with TRL's trainer, which this "
                               f"bundle does not run with {what}; plan without it, or without --out.")


def render_trl_files(model: ModelSpec, train: TrainSpec, cluster: Cluster, estimate: Estimate, *,
                     global_batch_size: int, model_ref: str | None, dataset: str, tokenizer: str | None,
                     label: str) -> dict[str, str]:
    """Every file of a dpo or grpo bundle as ``{filename: text}``; pure and deterministic."""
    check_trl_bundle(train)
    if train.task.grpo is not None:
        train.task.grpo.check_run(global_batch_size)  # GRPOTrainer's generation batch holds whole groups
    values = plan_values(model, train, cluster, model_ref=model_ref, dataset=dataset,
                         global_batch_size=global_batch_size, max_grad_norm=MAX_GRAD_NORM)
    files = {
        "train.py": render_trl_script(values),
        "accelerate_config.yaml": render_accelerate_yaml(train, cluster),
        "launch.sh": render_launch_sh(label=label, cluster=cluster, model_ref=model_ref, dataset=dataset,
                                      tokenizer=tokenizer),
        "PLAN.md": trl_plan_md(model, train, cluster, estimate, global_batch_size=global_batch_size,
                               model_ref=model_ref, dataset=dataset, label=label),
        "model_config.json": json.dumps(model.config, indent=2, sort_keys=True) + "\n",
        SAMPLE_DATASET: render_trl_sample(train.task.kind),
    }
    if train.uses_deepspeed:
        files["ds_config.json"] = json.dumps(deepspeed_config(model, train, cluster), indent=2) + "\n"
    return dict(sorted(files.items()))


def render_trl_script(values: dict[str, Any]) -> str:
    """train.py with ``values`` as its PLAN literal (``pprint`` of plain values: no user string is spliced into
    code)."""
    return TEMPLATE.replace(PLACEHOLDER, pprint.pformat(values, sort_dicts=True, width=100), 1)


def plan_values(model: ModelSpec, train: TrainSpec, cluster: Cluster, *, model_ref: str | None, dataset: str,
                global_batch_size: int, max_grad_norm: float) -> dict[str, Any]:
    t = train_spec_to_dict(train)
    task = train.task
    values: dict[str, Any] = {
        "task": task.kind.value, "model": model_ref, "model_name": model.name, "dataset": dataset,
        "method": t["method"], "precision": t["precision"], "optimizer": t["optimizer"],
        "micro_batch": train.micro_batch, "grad_accum": train.grad_accum, "seq_len": train.seq_len,
        "grad_checkpointing": train.grad_checkpointing, "attn_impl": t["attn_impl"], "lora": t["lora"],
        "quant": t["quant"], "zero_stage": train.zero_stage, "offload": t["offload"],
        "deepspeed": "ds_config.json" if train.uses_deepspeed else None, "max_grad_norm": max_grad_norm,
        "num_gpus": cluster.num_gpus, "num_nodes": cluster.num_nodes, "global_batch_size": global_batch_size,
    }
    if task.kind is Task.DPO:
        values.update(beta=DPO_BETA, loss_type=DPO_LOSS_TYPE, reference=task.reference.value)
    else:
        values.update({k: v for k, v in task.grpo.to_dict().items()})
    return values


def render_trl_sample(task: Task) -> str:
    """sample.jsonl of the task: DPO preference pairs (a prompt, a chosen and a rejected completion), GRPO prompts;
    built from sample_data's deterministic sentences."""
    texts = sample_texts()
    rows = []
    for i, text in enumerate(texts):
        head, _, rest = text.partition(". ")
        if task is Task.DPO:
            other = texts[(i + 1) % len(texts)].partition(". ")[2]
            rows.append({"prompt": head + ".", "chosen": " " + rest, "rejected": " " + other})
        else:
            rows.append({"prompt": text})
    return "".join(json.dumps(r) + "\n" for r in rows)


def task_flags(train: TrainSpec) -> list[str]:
    """planner's flags of the task (what `planner profile` and `estimate` need beside profile_argv's)."""
    task = train.task
    if task.kind is Task.DPO:
        return ["--task", "dpo", "--reference", task.reference.value]
    g = task.grpo
    flags = ["--task", "grpo", "--num-generations", str(g.num_generations), "--completion-len", str(g.completion_len),
             "--beta", f"{g.beta:g}", "--generation", g.generation.value]
    if g.generation.value != "transformers":
        flags += ["--vllm-memory-utilization", f"{g.vllm_memory_utilization:g}",
                  "--vllm-sleep" if g.vllm_sleep else "--no-vllm-sleep"]
    return flags


def trl_plan_md(model: ModelSpec, train: TrainSpec, cluster: Cluster, estimate: Estimate, *, global_batch_size: int,
                model_ref: str | None, dataset: str, label: str) -> str:
    """PLAN.md: the SFT bundle's plan, memory and assumptions (render_plan_md up to its files), then the TRL run."""
    base = render_plan_md(model, train, cluster, estimate, global_batch_size=global_batch_size, model_ref=model_ref,
                          dataset=dataset, has_ds_config=train.uses_deepspeed, label=label)
    head = base.split("\n## Files\n", 1)[0]
    head = "\n".join(line for line in head.splitlines() if not line.startswith("- Data: the texts are tokenized"))
    task = train.task
    trainer = "DPOTrainer" if task.kind is Task.DPO else "GRPOTrainer"
    fields = '`{"prompt", "chosen", "rejected"}`' if task.kind is Task.DPO else '`{"prompt"}`'
    lines = [head, "", f"## The {task.kind.value} run (TRL 1.16 {trainer})", "", f"- Task: {_md(task.label)}."]
    if task.kind is Task.DPO:
        lines.append(f"- DPOConfig: beta {DPO_BETA} and loss_type {DPO_LOSS_TYPE} (TRL's defaults; `--beta`, "
                     f"`--loss-type`), max_length {train.seq_len} (prompt plus completion), the reference "
                     f"`{_md(plan_values_reference(train))}`.")
    else:
        g = task.grpo
        lines.append(f"- GRPOConfig: num_generations {g.num_generations}, max_completion_length {g.completion_len}, "
                     f"beta {g.beta:g}; the prompts should hold about {train.seq_len - g.completion_len} tokens (TRL "
                     "1.16 has no max_prompt_length). The reward is `reward()` in train.py: a placeholder to replace "
                     "(a reward model's memory is not in the plan).")
        lines += [f"- {_md(line)}" for line in generation_advice(model, train, cluster, estimate.margin)]
    profile = profile_argv(model, train, cluster)
    profile[profile.index("--steps"):profile.index("--steps")] = task_flags(train)
    lines += [
        "",
        "## Files",
        "",
        f"- `train.py`: TRL's {trainer} with the plan as its defaults (`python train.py --help`).",
        "- `accelerate_config.yaml`, `launch.sh`: the processes and the `accelerate launch` command."
        + (" `ds_config.json`: the DeepSpeed config." if train.uses_deepspeed else ""),
        "- `model_config.json`: the model's config.json, for `--random-init` runs.",
        f"- `{SAMPLE_DATASET}`: generated rows {fields} for the smoke run.",
        "",
        "## Run it",
        "",
        "```bash",
        f"./launch.sh --max-steps 2 --dataset {SAMPLE_DATASET}   # smoke run on the bundled sample",
        f"./launch.sh                                          # the full run over {_md(dataset)}",
        "```",
        "",
        f"The full run reads `{_md(dataset)}`, one JSON object {fields} per line. Random weights, no download: "
        f"`./launch.sh --cpu --random-init model_config.json --tokenizer TOKENIZER_DIR --max-steps 2 --dataset "
        f"{SAMPLE_DATASET}`.",
        "",
        "## Check the estimate",
        "",
        "Record this script itself under planner's recorder, then compare the measured peaks with this estimate:",
        "",
        "```bash",
        shlex.join([*profile, "--", "python", "train.py"]),
        "planner compare profile",
        "```",
    ]
    return "\n".join(lines) + "\n"


def plan_values_reference(train: TrainSpec) -> str:
    return train.task.reference_for(train.method is not Method.FULL).value
