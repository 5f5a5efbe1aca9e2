"""Words for recommend(): why the chosen plan won, why each runner-up lost, and, when nothing fits, what
would (more GPUs, a bigger GPU, QLoRA, shorter sequences, offload, checkpointing), each with its numbers.

Every number here comes from the search's own estimates (planner.estimate.core.estimate) and step times.
"""

from __future__ import annotations

import dataclasses

from planner import catalog
from planner.plan.search import Layout, Scored, Searcher, divisors, gib
from planner.plan.types import (
    ATTN_ORDER,
    METHOD_PREFERENCE,
    OFFLOAD_ORDER,
    Alternative,
    NoPlanFits,
    Recommendation,
    Rejected,
)
from planner.specs import AttnImpl, Method, Offload

# How far "more GPUs" advice looks (powers of two from --gpus).
ADVICE_MAX_GPUS = 65_536
SEQ_STEP = 256  # sequence-length advice in steps of 256 tokens (issue 3, "what fits")
STEP_PARTS = (
    ("compute_s", "compute (including recomputation)"),
    ("dequant_s", "4-bit dequantization"),
    ("communication_s", "communication"),
    ("offload_transfer_s", "host-device transfers"),
    ("cpu_optimizer_s", "the CPU optimizer step"),
)
METHOD_WORDS = {Method.FULL: "full fine-tuning", Method.LORA: "LoRA", Method.QLORA: "QLoRA"}


def _cap(words: str) -> str:
    return words[:1].upper() + words[1:]


def _layout_of(plan) -> Layout:
    t = plan.train
    return Layout(t.method, t.zero_stage, t.offload, t.grad_checkpointing, t.attn_impl)


def _layout_words(lay: Layout) -> str:
    off = "" if lay.offload is Offload.NONE else f" + {lay.offload.value} offload"
    ck = "checkpointing on" if lay.grad_checkpointing else "checkpointing off"
    return f"{METHOD_WORDS[lay.method]}, ZeRO-{lay.zero_stage}{off}, {ck}, {lay.attn_impl.value}"


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
        def per_token(s: Scored, attr: str) -> float:
            return getattr(s.step, attr) / (s.step.tokens_per_rank * s.plan.cluster.num_gpus)

        attr, words = max(STEP_PARTS, key=lambda p: per_token(other, p[0]) - per_token(best, p[0]))
        detail = ""
        if attr == "communication_s":
            detail = f" (ZeRO-{ot.zero_stage} moves {gib(other.step.communication_bytes)} per GPU per step)"
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
        why.append(f"{_cap(METHOD_WORDS[t.method])}, as asked with --method.")
    # 2. layout
    rejected = _rejected(search, best, skipped, fa2, attn_impls, num_rejected)
    off = "no offload" if t.offload is Offload.NONE else f"{t.offload.value} offloaded to the CPU"
    lost = next((r for r in rejected if r.plan is not None and r.reason.startswith("does not fit")
                 and (r.plan.train.zero_stage, r.plan.train.offload) != (t.zero_stage, t.offload)), None)
    if t.zero_stage == 0:
        why.append("ZeRO-0 (plain data parallelism, one gradient all-reduce per step) fits, and no layout moves less "
                   "data or spends less time off the GPU.")
    elif lost is not None:
        lt = lost.plan.train
        lost_off = "" if lt.offload is Offload.NONE else f" with {lt.offload.value} offload"
        why.append(f"ZeRO-{t.zero_stage} with {off} is the fastest layout that fits; ZeRO-{lt.zero_stage}{lost_off} "
                   f"would be faster but {lost.reason} (more under rejected).")
    else:
        why.append(f"ZeRO-{t.zero_stage} with {off} is the fastest layout that fits.")
    # 3. batch
    micros = divisors(search.g // plan.cluster.num_gpus)
    i = micros.index(t.micro_batch)
    batch = (f"Micro-batch {t.micro_batch} x accumulation {t.grad_accum} x {plan.cluster.num_gpus} data-parallel ranks "
             f"= global batch {plan.global_batch_size}")
    if i + 1 < len(micros):
        bigger = search.plan(_layout_of(plan), micros[i + 1], plan.cluster.num_gpus)
        _, _, reason = search.check(bigger)
        batch += f"; micro-batch {micros[i + 1]} does not fit: {reason}." if reason else "."
    else:
        batch += ": the largest micro-batch the global batch allows."
    why.append(batch)
    # 4. checkpointing
    if t.grad_checkpointing:
        off_plan = search.plan(dataclasses.replace(_layout_of(plan), grad_checkpointing=False), 1, plan.cluster.num_gpus)
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
            f"({_utilisation(search.mfu, st)}): step {st.total_s:.2f} s = GPU compute {st.gpu_compute_s:.2f} + "
            f"exposed communication {st.exposed_communication_s:.2f}")
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
            sig = (lay.method, lay.zero_stage, lay.offload, n)
            reason += " (at any micro-batch, with or without checkpointing)"
        else:
            sig = (lay.method, lay.zero_stage, lay.offload, lay.grad_checkpointing, n)
        if sig in seen:
            continue
        seen.add(sig)
        out.append(Rejected(plan, f"does not fit: {reason}", est))
    if AttnImpl.EAGER not in attn_impls:
        eager = dataclasses.replace(_layout_of(best.plan), attn_impl=AttnImpl.EAGER)
        eplan = search.plan(eager, best.plan.micro_batch, best.plan.cluster.num_gpus)
        ok, est, reason = search.check(eplan)
        extra = f" (peak {gib(est.device_bytes)} against {gib(search.estimate(best.plan).device_bytes)})" if est else ""
        out.append(Rejected(eplan, "eager attention stores the s x s attention scores: never faster than sdpa in this "
                            f"model and needs at least as much memory{extra}" + ("" if ok else f"; {reason}"), est))
    if not fa2[0]:
        out.append(Rejected(None, fa2[1]))
    out += [Rejected(None, s) for s in skipped]
    return tuple(out)


# ------------------------------------------------------------------------------------------ no fit


def _first_fit(search: Searcher, layouts, n: int):
    for lay in layouts:
        plan = search.plan(lay, 1, n)
        ok, est, _ = search.check(plan)
        if ok:
            return plan, est
    return None


def _fastest_fit(search: Searcher, layouts, n: int):
    """Among ``layouts`` that fit at micro-batch 1 on ``n`` GPUs, the fastest (plan, estimate), or None."""
    best = None
    for lay in layouts:
        plan = search.plan(lay, 1, n)
        ok, est, _ = search.check(plan)
        if ok:
            scored = search.score(plan)
            if best is None or scored.key < best[0].key:
                best = (scored, est)
    return None if best is None else (best[0].plan, best[1])


def _leanest(search: Searcher, methods, zero_stages=(0, 1, 2, 3), offloads=OFFLOAD_ORDER, ckpts=(True, False)):
    """Layouts most likely to fit first: checkpointing on, most sharding and offload, sdpa."""
    out = []
    for m in methods:
        lays = search.layouts(m, zero_stages, offloads, ckpts, (AttnImpl.SDPA,))
        out += sorted(lays, key=lambda lay: (not lay.grad_checkpointing, -lay.zero_stage,
                                             -OFFLOAD_ORDER.index(lay.offload)))
    return out


def no_fit(search: Searcher, methods, counts, zero_stages, offloads, ckpts, attns, skipped) -> NoPlanFits:
    n0 = counts[0]
    gpu = search.gpu
    what = "/".join(METHOD_WORDS[m] for m in methods)
    msg = (f"no {what} plan for {search.model.name} fits on {counts[-1] if len(counts) == 1 else f'{n0} to {counts[-1]}'} "
           f"x {gpu.name} ({gib(gpu.memory_bytes)} each, {search.margin:.0%} margin) at sequence length "
           f"{search.base.seq_len} and global batch {search.g}.")
    tips: list[str] = []
    closest = _closest_tries(search, counts)  # before the advice below tries plans outside the search space
    leanest = _leanest(search, methods, zero_stages, offloads, ckpts)
    # More GPUs (memory never rises with more GPUs, so the fewest that fit is a binary search per layout).
    more = [n0 * 2**i for i in range(40) if n0 * 2**i <= ADVICE_MAX_GPUS]
    more = [n for n in more if n <= search.gpus_per_node or n % search.gpus_per_node == 0]
    best_more = None
    for m in methods:
        for lay in _leanest(search, (m,), zero_stages, offloads, ckpts):
            n = search.min_gpus(lay, tuple(more), {})
            if n is not None and (best_more is None or n < best_more[0]):
                best_more = (n, lay)
        if best_more:
            n = best_more[0]
            plan, est = _fastest_fit(search, _leanest(search, (m,), zero_stages, offloads, ckpts), n)
            batch = (f"global batch {search.g} divides evenly" if search.g % n == 0
                     else f"the global batch must become a multiple of {n}")
            tips.append(f"More GPUs: {METHOD_WORDS[m]} fits on {n} x {gpu.name} ({_layout_words(_layout_of(plan))}, "
                        f"micro-batch 1, peak {gib(est.device_bytes)}); {batch}.")
            break
    # A bigger GPU, same count.
    for other in sorted(catalog.gpus(), key=lambda g: (g.memory_bytes, g.name)):
        if other.memory_bytes <= gpu.memory_bytes or not other.supports_bf16 and search.base.precision.compute_dtype == "bf16":
            continue
        alt = Searcher(search.model, search.base, other, search.gpus_per_node, global_batch_size=search.g,
                       margin=search.margin, mfu=search.mfu, num_tokens=search.num_tokens,
                       price_per_gpu_hour=search.price, host_memory_bytes_per_node=search.host_mem,
                       allow_longer=search.allow_longer, inter_node_bytes_per_s=search.inter_node_bytes_per_s)
        hit = _first_fit(alt, _leanest(alt, methods, zero_stages, offloads, ckpts), n0)
        if hit:
            hit = _fastest_fit(alt, _leanest(alt, methods, zero_stages, offloads, ckpts), n0)
        search.memo.num_calls += alt.memo.num_calls
        if hit:
            plan, est = hit
            tips.append(f"A bigger GPU: {n0} x {other.name} ({gib(other.memory_bytes)}) fits "
                        f"{_layout_words(_layout_of(plan))} at micro-batch 1 (peak {gib(est.device_bytes)}).")
            break
    # QLoRA, when not already searched.
    if Method.QLORA not in methods:
        hit = _fastest_fit(search, _leanest(search, (Method.QLORA,), zero_stages, offloads, ckpts), n0)
        if hit:
            tips.append(f"QLoRA: fits on {n0} x {gpu.name} ({_layout_words(_layout_of(hit[0]))}, micro-batch 1, "
                        f"peak {gib(hit[1].device_bytes)}).")
    # Offload / checkpointing, when the user ruled them out.
    if tuple(offloads) != OFFLOAD_ORDER:
        hit = _fastest_fit(search, _leanest(search, methods, zero_stages, OFFLOAD_ORDER, ckpts), n0)
        if hit:
            tips.append(f"Offload: {_layout_words(_layout_of(hit[0]))} fits on {n0} GPU{'s' if n0 > 1 else ''} at micro-batch 1 "
                        f"(peak {gib(hit[1].device_bytes)}, host RAM {gib(hit[1].cpu_bytes_per_node)} per node).")
    if True not in ckpts:
        hit = _fastest_fit(search, _leanest(search, methods, zero_stages, offloads, (True,)), n0)
        if hit:
            tips.append(f"Checkpointing: {_layout_words(_layout_of(hit[0]))} fits on {n0} GPU{'s' if n0 > 1 else ''} at micro-batch 1 "
                        f"(peak {gib(hit[1].device_bytes)}).")
    # Shorter sequences (memory never falls with more tokens): binary search in steps of 256.
    seq_tip = _shorter_seq(search, leanest, n0)
    if seq_tip:
        tips.append(seq_tip)
    if not tips:
        tips.append(f"Nothing planner can change fits: even {ADVICE_MAX_GPUS} GPUs, the largest catalog GPU, "
                    f"QLoRA and {SEQ_STEP}-token sequences are too much.")
    return NoPlanFits(msg, tuple(tips), closest)


def _closest_tries(search: Searcher, counts) -> tuple[Rejected, ...]:
    """The five failed tries that came closest to fitting (smallest device peak), one per layout."""
    tries = sorted(((est.device_bytes if est else 1 << 62, key, plan, est, reason)
                    for key, plan, est, reason in search.failures.values() if plan.cluster.num_gpus in counts),
                   key=lambda x: (x[0], x[1]))
    seen, closest = set(), []
    for _, _, p, e, r in tries:
        t = p.train
        sig = (t.method, t.zero_stage, t.offload, p.cluster.num_gpus) + (() if e is None else (t.grad_checkpointing,))
        if sig in seen:
            continue
        seen.add(sig)
        closest.append(Rejected(p, f"does not fit: {r}" + (" (at any micro-batch)" if e is None else ""), e))
        if len(closest) == 5:
            break
    return tuple(closest)


def _shorter_seq(search: Searcher, leanest, n0: int) -> str | None:
    seqs = list(range(SEQ_STEP, search.base.seq_len, SEQ_STEP))
    if not seqs:
        return None
    best = None
    for lay in leanest:
        short = _with_seq(search, SEQ_STEP)
        if not short.fits(lay, 1, n0):
            continue
        lo, hi = 0, len(seqs) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _with_seq(search, seqs[mid]).fits(lay, 1, n0):
                lo = mid
            else:
                hi = mid - 1
        if best is None or seqs[lo] > best[0]:
            best = (seqs[lo], lay)
        break  # the leanest layout that fits at all gives the longest sequence
    if best is None:
        return None
    seq, lay = best
    return (f"Shorter sequences: {_layout_words(lay)} fits on {n0} x {search.gpu.name} at --seq-len {seq} "
            f"(micro-batch 1).")


def _with_seq(search: Searcher, seq: int) -> Searcher:
    cache = search.__dict__.setdefault("_seq_searchers", {})
    if seq not in cache:
        alt = Searcher(search.model, dataclasses.replace(search.base, seq_len=seq), search.gpu, search.gpus_per_node,
                       global_batch_size=search.g, margin=search.margin, mfu=search.mfu, num_tokens=search.num_tokens,
                       price_per_gpu_hour=search.price, host_memory_bytes_per_node=search.host_mem,
                       allow_longer=search.allow_longer, inter_node_bytes_per_s=search.inter_node_bytes_per_s)
        alt.memo = search.memo  # share the estimate cache and call count
        cache[seq] = alt
    return cache[seq]


__all__ = ["explain", "lost_because", "no_fit", "ATTN_ORDER"]


def _utilisation(mfu: float | None, st) -> str:
    """How the step time was modelled: the --mfu override, or the per-phase model and what it amounts to."""
    if mfu is not None:
        return f"MFU {mfu:.0%}, from --mfu"
    return f"per-phase model, {st.hardware_flops_utilisation:.0%} of peak FLOP/s"
