"""The task of a ``--task dpo`` or ``grpo`` bundle's train.py read back (``--from BUNDLE``): PLAN's ``task`` and its
settings, as planner/emit/trl_bundle.py ``plan_values`` writes them (train.py's options default to them and hand
them to DPOConfig or GRPOConfig). A bundle without ``task`` is the SFT bundle: the default task.
"""

from __future__ import annotations

from planner.specs import Generation, GrpoSpec, Reference, Task, TaskSpec

# DPOConfig's beta and loss_type: the loss's scalars over [pairs]-sized log-probability sums (posttrain_fields.py)
DPO_NO_MEMORY = ("beta", "loss_type")


def bundle_task(r) -> TaskSpec:
    """PLAN's task (``r.data`` is PLAN); marks its keys read."""
    kind = r.text("task", "sft")
    try:
        task = Task(kind)
    except ValueError:
        raise r.bad("task", kind, "one of " + ", ".join(t.value for t in Task)) from None
    if task is Task.SFT:
        return TaskSpec()
    if task is Task.DPO:
        for key in DPO_NO_MEMORY:
            if r.has(key):
                r.get(key)
                r.ignored[key] = "DPO's loss on [pairs]-sized log-probability sums: no memory planner models"
        ref = r.text("reference", "auto")
        try:
            return TaskSpec(Task.DPO, Reference(ref))
        except ValueError:
            raise r.bad("reference", ref, "one of " + ", ".join(x.value for x in Reference)) from None
    beta = r.get("beta", 0.0)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise r.bad("beta", beta, "a number")
    generation = r.text("generation", "transformers")
    try:
        gen = Generation(generation)
    except ValueError:
        raise r.bad("generation", generation, "one of " + ", ".join(g.value for g in Generation)) from None
    utilization = r.get("vllm_memory_utilization", 0.3)
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)):
        raise r.bad("vllm_memory_utilization", utilization, "a number")
    grpo = GrpoSpec(num_generations=r.whole("num_generations", 8, minimum=2),
                    completion_len=r.whole("completion_len", 512), beta=float(beta), generation=gen,
                    vllm_memory_utilization=float(utilization), vllm_sleep=bool(r.flag("vllm_sleep", False)))
    r.notes.append(f"a TRL bundle: --task grpo, {grpo.num_generations} generations, beta {grpo.beta:g}, "
                   f"{gen.value} generation.")
    return TaskSpec(Task.GRPO, Reference.AUTO, grpo)
