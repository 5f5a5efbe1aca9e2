"""Words for recommend(): why the chosen plan won, why each runner-up lost, and, when nothing fits, what
would (more GPUs, a bigger GPU, QLoRA, shorter sequences, offload, checkpointing), each with its numbers.

Every number here comes from the search's own estimates (planner.estimate.core.estimate) and step times.
What would fit is ``no_fit`` (no_fit.py, re-exported here); the names of methods and layouts are in words.py.
"""

from __future__ import annotations

import dataclasses

from planner.errors import PlannerError
from planner.plan.engine_choice import engine_line
from planner.plan.no_fit import ADVICE_MAX_GPUS, SEQ_STEP, no_fit
from planner.plan.search import Scored, Searcher, divisors, gib
from planner.plan.types import (
    ATTN_ORDER,
    METHOD_PREFERENCE,
    Alternative,
    Recommendation,
    Rejected,
)
from planner.plan.words import METHOD_WORDS, layout_of
from planner.specs import AttnImpl, Method, Offload

# The parts that add up to a step (StepTime.total_s), each a function of the StepTime, with its words. The
# communication that compute hides costs nothing: only the exposed part can make a plan lose.
STEP_PARTS = (
    ("compute_s", lambda st: st.compute_s + st.attention_s + st.elementwise_s,
     "compute (including recomputation)"),
    ("dequant_s", lambda st: st.dequant_s, "4-bit dequantization"),
    ("exposed_communication_s", lambda st: st.exposed_communication_s, "communication compute does not hide"),
    ("optimizer_s", lambda st: st.optimizer_s, "the GPU optimizer step"),
    ("offload_transfer_s", lambda st: st.offload_transfer_s, "host-device transfers"),
    ("cpu_optimizer_s", lambda st: st.cpu_optimizer_s, "the CPU optimizer step"),
)


def _cap(words: str) -> str:
    return words[:1].upper() + words[1:]


def _closest_failure(search: Searcher, method: Method):
    """The failed try of ``method`` that came closest to fitting (smallest estimated device peak)."""
    tries = [(est.device_bytes, key, plan, reason) for key, plan, est, reason in search.failures.values()
             if est is not None and plan.train.method is method]
    if not tries:
        tries_lb = [(key, plan, reason) for key, plan, est, reason in search.failures.values()
                    if plan.train.method is method]
        if not tries_lb:
            return None
        key, plan, reason = min(tries_lb, key=lambda t: t[0])
        return plan, reason
    _, _, plan, reason = min(tries, key=lambda t: (t[0], t[1]))
    return plan, reason


def lost_because(best: Scored, other: Scored) -> str:
    bt, ot = best.plan.train, other.plan.train
    prefix = ""
    if ot.method is not bt.method:
        prefix = (f"--method auto prefers {METHOD_WORDS[bt.method]} over {METHOD_WORDS[ot.method]} while it fits; ")
    # Compare per GPU: that is the ranking (and the cost per token).
    b_gpu = best.tokens_per_s / best.plan.cluster.num_gpus
    o_gpu = other.tokens_per_s / other.plan.cluster.num_gpus
    ratio = o_gpu / b_gpu
    sooner = ""
    if other.plan.cluster.num_gpus != best.plan.cluster.num_gpus:
        speed = other.tokens_per_s / best.tokens_per_s
        sooner = (f"; on {other.plan.cluster.num_gpus} GPUs it would finish {speed:.2f}x as fast at "
                  f"{1 / ratio:.2f}x the cost")
    if ratio < 1 - 1e-9:
        # Which part of the step costs more per token (cluster-seconds per token).
        def per_token(s: Scored, part) -> float:
            return part(s.step) / (s.step.tokens_per_rank * s.plan.cluster.num_gpus)

        attr, _, words = max(STEP_PARTS, key=lambda p: per_token(other, p[1]) - per_token(best, p[1]))
        detail = ""
        if attr == "exposed_communication_s":
            name = ot.parallelism.label if ot.uses_fsdp2 else f"ZeRO-{ot.zero_stage}"
            detail = f" ({name} moves {gib(other.step.communication_bytes)} per GPU per step)"
        elif attr == "compute_s" and ot.grad_checkpointing and not bt.grad_checkpointing:
            detail = " (checkpointing recomputes the forward)"
        elif attr in ("offload_transfer_s", "cpu_optimizer_s"):
            detail = f" (offload {ot.offload.value})"
        return (f"{prefix}{1 - ratio:.0%} less throughput per GPU ({o_gpu:,.0f} vs {b_gpu:,.0f} tokens/s): more "
                f"time in {words}{detail}{sooner}")
    if ratio > 1 + 1e-9:
        return f"{prefix}{ratio - 1:.0%} more throughput per GPU ({o_gpu:,.0f} vs {b_gpu:,.0f} tokens/s){sooner}"
    return (prefix or "") + (
        "same estimated throughput per GPU; ranked after it by the tie-break (more GPUs, lower ZeRO stage, "
        "less offload, no checkpointing, sdpa, larger micro-batch)"
    )


def explain(search: Searcher, best: Scored, runners: list[Scored], per_method, *, auto: bool, counts,
            skipped, fa2, attn_impls, num_rejected: int) -> Recommendation:
    plan = best.plan
    t = plan.train
    est = search.with_throughput(plan)
    why: list[str] = []
    # 1. method
    if auto:
        failed = [m for m in METHOD_PREFERENCE[: METHOD_PREFERENCE.index(t.method)]]
        if not failed:
            line = (f"{_cap(METHOD_WORDS[t.method])} fits, and --method auto prefers full fine-tuning over "
                    "LoRA over QLoRA (every weight trains; no adapter or 4-bit approximation).")
        else:
            parts = []
            for m in failed:
                c = _closest_failure(search, m)
                parts.append(f"{METHOD_WORDS[m]} does not fit (closest: {c[0].label()}: {c[1]})" if c
                             else f"{METHOD_WORDS[m]} does not fit")
            line = "; ".join(parts) + f"; {METHOD_WORDS[t.method]} fits, and auto takes the first method that does."
        lesser = [per_method[m][0] for m in METHOD_PREFERENCE[METHOD_PREFERENCE.index(t.method) + 1:]
                  if per_method.get(m)]
        for s in lesser:
            line += (f" {METHOD_WORDS[s.plan.train.method]} would reach {s.tokens_per_s:,.0f} tokens/s "
                     f"({s.tokens_per_s / best.tokens_per_s:.2f}x).")
        why.append(line)
    else:
        why.append(f"{_cap(METHOD_WORDS[t.method])}, as asked (--method, or the config --from reads).")
    # 2. layout
    rejected = _rejected(search, best, skipped, fa2, attn_impls, num_rejected)
    off = "no offload" if t.offload is Offload.NONE else f"{t.offload.value} offloaded to the CPU"
    lost = next((r for r in rejected if r.plan is not None and r.reason.startswith("does not fit")
                 and r.plan.train.parallelism != t.parallelism), None)
    if t.uses_fsdp2:
        why.append(f"{t.parallelism.label} is the fastest layout that fits.")
    elif not t.uses_deepspeed:
        why.append("ZeRO-0 (plain data parallelism, one gradient all-reduce per step) fits, and no layout moves less "
                   "data or spends less time off the GPU.")
    elif t.zero_stage == 0:
        why.append("DeepSpeed at ZeRO-0 (--engine deepspeed --zero 0, as asked): every state whole on every GPU, one "
                   "gradient all-reduce per step after backward.")
    elif lost is not None:
        lt = lost.plan.train
        lost_off = "" if lt.offload is Offload.NONE else f" with {lt.offload.value} offload"
        lost_name = lt.parallelism.label if lt.uses_fsdp2 else f"ZeRO-{lt.zero_stage}{lost_off}"
        why.append(f"ZeRO-{t.zero_stage} with {off} is the fastest layout that fits; {lost_name} "
                   f"would be faster but {lost.reason} (more under rejected).")
    else:
        why.append(f"ZeRO-{t.zero_stage} with {off} is the fastest layout that fits.")
    engine = engine_line(search, best)
    if engine:
        why.append(engine)
    # 3. batch
    micros = divisors(search.g // plan.cluster.num_gpus)
    i = micros.index(t.micro_batch)
    batch = (f"Micro-batch {t.micro_batch} x accumulation {t.grad_accum} x {plan.cluster.num_gpus} data-parallel ranks "
             f"= global batch {plan.global_batch_size}")
    if i + 1 < len(micros):
        bigger = search.plan(layout_of(plan), micros[i + 1], plan.cluster.num_gpus)
        _, _, reason = search.check(bigger)
        batch += f"; micro-batch {micros[i + 1]} does not fit: {reason}." if reason else "."
    else:
        batch += ": the largest micro-batch the global batch allows."
    why.append(batch)
    # 4. checkpointing
    if t.grad_checkpointing:
        off_plan = search.plan(dataclasses.replace(layout_of(plan), grad_checkpointing=False), 1, plan.cluster.num_gpus)
        ok, _, reason = search.check(off_plan)
        why.append("Activation checkpointing on: without it " + (f"even micro-batch 1 does not fit ({reason})."
                   if not ok else "a smaller micro-batch fits but runs slower than recomputing here."))
    else:
        why.append("Activation checkpointing off: the activations fit, so no forward is recomputed "
                   "(checkpointing would add about a third to the compute).")
    # 5. attention
    if t.attn_impl is AttnImpl.SDPA and AttnImpl.FLASH_ATTENTION_2 in attn_impls:
        why.append("Attention sdpa: flash_attention_2 fits no larger micro-batch here and runs at the same estimated "
                   "speed, and sdpa needs no extra package.")
    elif t.attn_impl is AttnImpl.SDPA and not fa2[0]:
        why.append(f"Attention sdpa: {fa2[1]}.")
    else:
        why.append(f"Attention {t.attn_impl.value}: it lets a larger micro-batch fit than sdpa.")
    # 6. memory and speed
    why.append(
        f"Estimated peak {gib(est.device_bytes)} on the device at {est.peak_phase} (reserved {gib(est.reserved_bytes)}, "
        f"allocated {gib(est.per_gpu.total_bytes)}) of {gib(est.capacity_bytes)}: {gib(est.headroom_bytes)} to spare "
        f"beyond the {est.margin:.0%} margin" + (f"; host RAM {gib(est.cpu_bytes_per_node)} per node." if est.cpu_bytes_per_node else ".")
    )
    st, tp = best.step, est.throughput
    line = (f"{tp.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, {best.tokens_per_s:,.0f} on all {plan.cluster.num_gpus} "
            f"({_utilisation(search.mfu, st)}): step {st.total_s:.2f} s = compute {st.gpu_compute_s - st.optimizer_s:.2f} + "
            f"exposed communication {st.exposed_communication_s:.2f} + optimizer step {st.optimizer_s:.2f}")
    if st.offload_transfer_s or st.cpu_optimizer_s:
        line += f" + host transfers {st.offload_transfer_s:.2f} + CPU optimizer {st.cpu_optimizer_s:.2f}"
    line += " s"
    if tp.num_tokens:
        line += f"; {tp.num_tokens:,} tokens take {tp.total_time_s / 3600:,.1f} h"
        if tp.price_per_gpu_hour:
            line += f" and cost {tp.cost:,.2f} at {tp.price_per_gpu_hour:g} per GPU-hour"
    why.append(line + ".")
    if len(counts) > 1:
        why.append(f"{plan.cluster.num_gpus} GPUs of the counts searched ({', '.join(map(str, counts))}): plans are "
                   "ranked by tokens/s per GPU, which is also cost per token (one price per GPU-hour), so more GPUs "
                   "win only where they stay as efficient; see the runners-up for other counts.")
    runners_up = tuple(Alternative(s.plan, search.with_throughput(s.plan), lost_because(best, s)) for s in runners)
    return Recommendation(
        plan=plan, estimate=est, why=tuple(why), runners_up=runners_up,
        rejected=rejected,
        margin=search.margin, mfu=search.mfu, num_tokens=search.num_tokens, price_per_gpu_hour=search.price,
        num_estimates=search.memo.num_calls,
    )


def _rejected(search: Searcher, best: Scored, skipped, fa2, attn_impls, num_rejected: int) -> tuple[Rejected, ...]:
    """Plans that would have ranked above the chosen one had memory allowed, best first: per layout and GPU
    count, the smallest micro-batch that does not fit; then the choices refused before estimating."""
    seen, out = set(), []
    for group in sorted(search.groups, key=lambda g: g.key):
        if group.key >= best.key or len(out) >= num_rejected:
            break
        lay, n = group.layout, group.num_gpus
        fit = search.group_fit.get((lay, n))
        if fit == group.micros[-1]:
            continue  # fits at its best: a runner-up, not a rejection
        micro = group.micros[0] if fit is None else group.micros[group.micros.index(fit) + 1]
        plan = search.plan(lay, micro, n)
        ok, est, reason = search.check(plan)
        if ok:
            continue
        if est is None:
            # Model states alone: no micro-batch, checkpointing or attention choice changes that.
            sig = (lay.method, lay.zero_stage, lay.offload, lay.fsdp, n)
            reason += " (at any micro-batch, with or without checkpointing)"
        else:
            sig = (lay.method, lay.zero_stage, lay.offload, lay.fsdp, lay.grad_checkpointing, n)
        if sig in seen:
            continue
        seen.add(sig)
        out.append(Rejected(plan, f"does not fit: {reason}", est))
    if AttnImpl.EAGER not in attn_impls and _admits_eager(search.base):
        eager = dataclasses.replace(layout_of(best.plan), attn_impl=AttnImpl.EAGER)
        eplan = search.plan(eager, best.plan.micro_batch, best.plan.cluster.num_gpus)
        ok, est, reason = search.check(eplan)
        extra = f" (peak {gib(est.device_bytes)} against {gib(search.estimate(best.plan).device_bytes)})" if est else ""
        out.append(Rejected(eplan, "eager attention stores the s x s attention scores: never faster than sdpa in this "
                            f"model and needs at least as much memory{extra}" + ("" if ok else f"; {reason}"), est))
    if not fa2[0]:
        out.append(Rejected(None, fa2[1]))
    out += [Rejected(None, s) for s in skipped]
    return tuple(out)


def _admits_eager(base) -> bool:
    """Whether the run's recipe allows eager attention at all (--precision bf16-autocast does not, yet)."""
    try:
        dataclasses.replace(base, attn_impl=AttnImpl.EAGER)
    except PlannerError:
        return False
    return True


__all__ = ["explain", "lost_because", "no_fit", "ATTN_ORDER", "ADVICE_MAX_GPUS", "SEQ_STEP", "METHOD_WORDS"]


def _utilisation(mfu: float | None, st) -> str:
    """How the step time was modelled: the --mfu override, or the per-phase model and what it amounts to."""
    if mfu is not None:
        return f"MFU {mfu:.0%}, from --mfu"
    return f"per-phase model, {st.hardware_flops_utilisation:.0%} of peak FLOP/s"
