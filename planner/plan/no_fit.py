"""What would fit when nothing does: more GPUs, a bigger GPU, QLoRA, offload, checkpointing, shorter sequences.

``no_fit`` tries each change with the search's own estimates (planner.estimate.core.estimate) and says, with its
numbers, a layout that fits under it; the ``NoPlanFits`` it returns also lists the tries that came closest.
"""

from __future__ import annotations

import dataclasses

from planner import catalog
from planner.plan.search import Searcher, gib
from planner.plan.types import OFFLOAD_ORDER, NoPlanFits, Rejected
from planner.plan.words import METHOD_WORDS, layout_of, layout_words
from planner.specs import AttnImpl, Method

# How far "more GPUs" advice looks (powers of two from --gpus).
ADVICE_MAX_GPUS = 65_536
SEQ_STEP = 256  # sequence-length advice in steps of 256 tokens (issue 3, "what fits")


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
            tips.append(f"More GPUs: {METHOD_WORDS[m]} fits on {n} x {gpu.name} ({layout_words(layout_of(plan))}, "
                        f"micro-batch 1, peak {gib(est.device_bytes)}); {batch}.")
            break
    # A bigger GPU, same count.
    for other in sorted(catalog.gpus(), key=lambda g: (g.memory_bytes, g.name)):
        if other.memory_bytes <= gpu.memory_bytes or not other.supports_bf16 and search.base.precision.matmul_dtype == "bf16":
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
                        f"{layout_words(layout_of(plan))} at micro-batch 1 (peak {gib(est.device_bytes)}).")
            break
    # QLoRA, when not already searched.
    if Method.QLORA not in methods:
        hit = _fastest_fit(search, _leanest(search, (Method.QLORA,), zero_stages, offloads, ckpts), n0)
        if hit:
            tips.append(f"QLoRA: fits on {n0} x {gpu.name} ({layout_words(layout_of(hit[0]))}, micro-batch 1, "
                        f"peak {gib(hit[1].device_bytes)}).")
    # Offload / checkpointing, when the user ruled them out.
    if tuple(offloads) != OFFLOAD_ORDER:
        hit = _fastest_fit(search, _leanest(search, methods, zero_stages, OFFLOAD_ORDER, ckpts), n0)
        if hit:
            tips.append(f"Offload: {layout_words(layout_of(hit[0]))} fits on {n0} GPU{'s' if n0 > 1 else ''} at micro-batch 1 "
                        f"(peak {gib(hit[1].device_bytes)}, host RAM {gib(hit[1].cpu_bytes_per_node)} per node).")
    if True not in ckpts:
        hit = _fastest_fit(search, _leanest(search, methods, zero_stages, offloads, (True,)), n0)
        if hit:
            tips.append(f"Checkpointing: {layout_words(layout_of(hit[0]))} fits on {n0} GPU{'s' if n0 > 1 else ''} at micro-batch 1 "
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
        sig = (t.method, t.parallelism.engine, t.parallelism.fsdp_config, t.zero_stage, t.offload,
               p.cluster.num_gpus) + (() if e is None else (t.grad_checkpointing,))
        if sig in seen:
            continue
        seen.add(sig)
        closest.append(Rejected(p, f"does not fit: {r}" + (" (at any micro-batch)" if e is None else ""), e))
        if len(closest) == 5:
            break
    return tuple(closest)


def _shorter_seq(search: Searcher, leanest, n0: int) -> str | None:
    # --task grpo/ppo: a row is the prompt plus its completion (TrainSpec refuses --seq-len up to
    # --completion-len / --response-len), so a shorter sequence keeps the completion whole
    ppo = search.base.task.ppo
    generated = max(search.base.grpo_completion_len, ppo.response_len if ppo is not None else 0)
    seqs = [s for s in range(SEQ_STEP, search.base.seq_len, SEQ_STEP) if s > generated]
    if not seqs:
        return None
    best = None
    for lay in leanest:
        short = _with_seq(search, seqs[0])
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
    return (f"Shorter sequences: {layout_words(lay)} fits on {n0} x {search.gpu.name} at --seq-len {seq} "
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
