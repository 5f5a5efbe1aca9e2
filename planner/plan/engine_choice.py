"""Why the recommender chose FSDP2 or DeepSpeed (or plain data parallelism): the best plan of each engine on the
chosen plan's GPU count, method, checkpointing and attention, compared on modelled throughput and device peak."""

from __future__ import annotations

from planner.plan.search import Scored, Searcher
from planner.units import fmt_gib


def engine_name(t) -> str:
    return t.parallelism.label


def engine_line(search: Searcher, best: Scored) -> str | None:
    """One sentence weighing the best FSDP2 plan against the best DeepSpeed/DDP plan (None when the search weighed
    no FSDP2 layout, or one engine has no plan that fits)."""
    if not search.fsdp_configs or not search.zero_stages:
        return None  # one engine was asked for (--engine, --zero, --offload, a --from config's)
    t, n = best.plan.train, best.plan.cluster.num_gpus
    layouts = search.layouts(t.method, search.zero_stages, search.offloads,
                             (t.grad_checkpointing,), (t.attn_impl,))
    fsdp = [lay for lay in layouts if lay.fsdp is not None]
    other = [lay for lay in layouts if lay.fsdp is None]
    if not fsdp or not other:
        return None
    a, b = search.best(fsdp, (n,), 1), search.best(other, (n,), 1)
    if not a or not b:
        missing = "FSDP2" if not a else "DeepSpeed or plain data parallelism"
        return f"Engine: no {missing} layout fits on {n} GPU(s) with these settings, so the other engine runs it."
    a, b = a[0], b[0]
    if best.plan.train.uses_fsdp2:
        won, lost = a, b
    else:
        won, lost = b, a
    ew, el = search.estimate(won.plan), search.estimate(lost.plan)
    tw, tl = won.tokens_per_s / n, lost.tokens_per_s / n
    why = (f"{tw / tl - 1:.2%} faster" if tw > tl * (1 + 1e-9) else
           "as fast, and first on a tie (DeepSpeed's stages before FSDP2)")
    return (f"Engine: {engine_name(won.plan.train)} ({tw:,.0f} tokens/s per GPU, micro-batch {won.plan.train.micro_batch},"
            f" device peak {fmt_gib(ew.device_bytes, 1)}) over {engine_name(lost.plan.train)} ({tl:,.0f} tokens/s per "
            f"GPU, micro-batch {lost.plan.train.micro_batch}, {fmt_gib(el.device_bytes, 1)}): {why} in the modelled "
            "step (FSDP2 all-gathers every parameter per micro-batch, twice when it reshards, and reduce-scatters "
            "the gradients; DeepSpeed ZeRO-1/2 reduce gradients and gather the updated shards once per step).")
