"""recommend(): choose the training plan. Enumerate, keep what fits, rank by estimated throughput.

The search space: method (``auto`` tries full, then LoRA, then QLoRA, and takes the first that fits),
ZeRO stage x offload and FSDP2's layouts (``fsdp_configs``: reshard after forward or not), activation checkpointing, attention implementation, micro-batch with the gradient
accumulation that completes the global batch (micro x accumulation x data-parallel ranks = global batch),
and, with ``max_gpus``, the number of GPUs from ``--gpus`` up to ``max_gpus``.

Memory is always ``planner.estimate.core.estimate``. The work stays bounded because the search exploits
three monotonicities of that estimate (each a tested property of the estimator): memory never falls
with a larger micro-batch (binary search for the largest that fits), never rises with more GPUs (binary
search for the fewest that fit), and checkpointing never raises it. Estimated throughput never falls with
a larger micro-batch at a fixed global batch, so each (layout, GPU count) group is represented by its
largest fitting micro-batch, and groups are visited best-first by a throughput bound that memory cannot
improve (branch and bound): the search stops once the best plans are found.

Ranking: method preference (auto only), then estimated tokens/s per GPU (on a fixed GPU count that is the
cluster's throughput; across GPU counts it is also the cost order, since cost = GPU-hours x one price),
then more GPUs (the same cost, sooner), lower ZeRO stage (FSDP2 after stage 3), less offload, no checkpointing, sdpa before
flash_attention_2 before eager, larger micro-batch. Every key is explicit, so the output is deterministic.
"""

from __future__ import annotations

from dataclasses import replace

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.throughput import DEFAULT_MFU, validate_mfu, validate_price, validate_tokens
from planner.plan import faster, recipes
from planner.plan.advice import explain, no_fit
from planner.plan.estimate_cache import DEFAULT_HOST_MEMORY_BYTES_PER_NODE, GPUS_PER_NODE
from planner.plan.generation_choice import generation_advice
from planner.plan.search import Searcher
from planner.plan.types import (
    ATTN_ORDER,
    METHOD_PREFERENCE,
    OFFLOAD_ORDER,
    Alternative,
    NoPlanFits,
    Recommendation,
    Rejected,
)
from planner.specs import (
    AttnImpl,
    Cluster,
    FsdpConfig,
    GpuSpec,
    Method,
    ModelSpec,
    Offload,
    Plan,
    TrainSpec,
    validate_margin,
)

__all__ = ["ATTN_ORDER", "METHOD_PREFERENCE", "OFFLOAD_ORDER", "Alternative", "NoPlanFits", "Plan", "Recommendation",
           "Rejected", "flash_attention_2_support", "recommend"]

DEFAULT_RUNNERS_UP = 4
# Far above any published run (Llama 3 405B: 16M tokens per step = 2,048 sequences of 8k); keeps the
# divisor enumeration (square root of the batch per GPU count) bounded.
MAX_GLOBAL_BATCH = 10_000_000
DEFAULT_REJECTED = 5
# flash-attn 2 supports NVIDIA Ampere or newer (compute capability >= 8.0) and, through its ROCm
# backend, AMD MI200 (gfx90a) and MI300 (gfx942) (Dao-AILab/flash-attention README, "Installation").
FA2_MIN_COMPUTE_CAPABILITY = (8, 0)
FA2_ROCM_TARGETS = ("gfx90a", "gfx942")


# ------------------------------------------------------------------------------------------ helpers


def flash_attention_2_support(gpu: GpuSpec) -> tuple[bool, str]:
    """(supported, reason) from the catalog record's compute capability or ROCm target."""
    rec = next((r for r in catalog.gpu_records() if r["name"] == gpu.name), None)
    if rec is None:
        return False, f"{gpu.name}: compute capability unknown, flash_attention_2 not assumed"
    cc = rec.get("compute_capability")
    if cc:
        major, minor = (int(x) for x in str(cc).split(".")[:2])
        if (major, minor) >= FA2_MIN_COMPUTE_CAPABILITY:
            return True, ""
        return False, f"flash_attention_2 needs compute capability 8.0 or newer; {gpu.name} is {cc}"
    target = rec.get("gfx_target")
    if target in FA2_ROCM_TARGETS:
        return True, ""
    return False, f"flash_attention_2 has no kernel for {gpu.name} ({target or 'unknown target'})"


def recommend(
    model: ModelSpec,
    base: TrainSpec,
    cluster: Cluster,
    *,
    global_batch_size: int,
    method: str = "auto",
    max_gpus: int | None = None,
    margin: float = 0.1,
    mfu: float | None = DEFAULT_MFU,
    num_tokens: int = 0,
    price_per_gpu_hour: float = 0.0,
    zero_stages: tuple[int, ...] = (0, 1, 2, 3),
    offloads: tuple[Offload, ...] = OFFLOAD_ORDER,
    checkpointing: tuple[bool, ...] = (False, True),
    attn_impls: tuple[AttnImpl, ...] | None = None,
    host_memory_bytes_per_node: int | None = DEFAULT_HOST_MEMORY_BYTES_PER_NODE,
    num_runners_up: int = DEFAULT_RUNNERS_UP,
    num_rejected: int = DEFAULT_REJECTED,
    allow_longer: bool = False,
    fsdp_configs: tuple[FsdpConfig, ...] = (),
    recipes: bool = False,
    fixed_knobs: frozenset[str] = frozenset(),
) -> Recommendation:
    """The best plan for ``model`` on ``cluster``'s GPU type; raises NoPlanFits when nothing fits. ``recipes``:
    when nothing fits with ``base``'s recipe, try the memory-saving knobs left off (plan/recipes.py), except
    those whose training flag is in ``fixed_knobs`` (the ones the user typed)."""
    validate_mfu(mfu)
    validate_price(price_per_gpu_hour)
    validate_tokens(num_tokens)
    validate_margin(margin)
    if not 1 <= global_batch_size <= MAX_GLOBAL_BATCH:
        raise PlannerError(
            f"--global-batch-size must be from 1 to {MAX_GLOBAL_BATCH:,} sequences, got {global_batch_size}."
        )
    if base.seq_len > model.max_position_embeddings and not allow_longer:
        raise PlannerError(
            f"--seq-len {base.seq_len} is longer than {model.name}'s position limit "
            f"({model.max_position_embeddings}); use a shorter sequence or pass --allow-longer."
        )
    if method == "auto":
        methods, auto = METHOD_PREFERENCE, True
        if base.precision.compute_dtype == "bf16" and not cluster.gpu.supports_bf16:
            # QLoRA's bf16 compute has no kernel there (estimate/core.py check_combination refuses it): the auto
            # search leaves it out rather than stopping on it; --method qlora still gets that sentence
            methods = tuple(m for m in methods if m is not Method.QLORA)
    else:
        try:
            methods, auto = (Method(method),), False
        except ValueError:
            raise PlannerError(f"--method {method!r} is not valid; choose one of auto, full, lora, qlora.") from None
    base, dropout_note = _peft_lora_dropout(model, base, methods)
    counts, skipped = gpu_count_candidates(cluster, global_batch_size, max_gpus)
    if base.optimizer_in_backward:
        # one GPU, the whole global batch as one micro-batch (search.Searcher.train): the hooks step at every
        # backward, before any data-parallel reduction (estimate/core.py check_combination)
        if 1 not in counts:
            raise PlannerError("--optimizer-in-backward runs on one GPU; recommend it with --gpus 1.")
        counts = (1,)
    fa2_ok, fa2_reason = flash_attention_2_support(cluster.gpu)
    if attn_impls is None:
        attn_impls = (AttnImpl.SDPA, AttnImpl.FLASH_ATTENTION_2) if fa2_ok else (AttnImpl.SDPA,)
    elif AttnImpl.FLASH_ATTENTION_2 in attn_impls and not fa2_ok:
        raise PlannerError(f"--attn flash_attention_2 is not available here: {fa2_reason}.")
    search = Searcher(
        model, base, cluster.gpu, gpus_per_node(cluster), global_batch_size=global_batch_size, margin=margin,
        mfu=mfu, num_tokens=num_tokens, price_per_gpu_hour=price_per_gpu_hour,
        host_memory_bytes_per_node=(cluster.host_memory_bytes_per_node if host_memory_bytes_per_node is None
                                    else host_memory_bytes_per_node),
        allow_longer=allow_longer,
        inter_node_bytes_per_s=cluster.inter_node_bytes_per_s,
    )
    search.fsdp_configs = fsdp_configs  # FSDP2 layouts weighed beside DeepSpeed's (search.layouts)
    search.zero_stages, search.offloads = zero_stages, offloads  # engine_choice compares within them
    k = 1 + num_runners_up
    per_method: dict[Method, list] = {}
    chosen_method = None
    all_layouts = {m: search.layouts(m, zero_stages, offloads, checkpointing, attn_impls) for m in methods}
    if not any(all_layouts.values()):
        raise PlannerError(
            f"no valid combination of --method {method}, --zero {'/'.join(map(str, zero_stages))} and --offload "
            f"{'/'.join(o.value for o in offloads)}: offload needs ZeRO 1-3, optimizer+params needs ZeRO 3, QLoRA "
            "does not offload parameters, and bitsandbytes optimizers and Adafactor no ZeRO."
        )
    for m in methods:
        if chosen_method is None:
            per_method[m] = search.best(all_layouts[m], counts, k)
            chosen_method = m if per_method[m] else None
        else:
            # Less-preferred methods only for the comparison in "why": on the chosen plan's GPU count, with
            # its checkpointing and attention, which keeps this to a few estimates.
            top = per_method[chosen_method][0].plan
            layouts = search.layouts(m, zero_stages, offloads, (top.train.grad_checkpointing,), (top.train.attn_impl,))
            per_method[m] = search.best(layouts, (top.cluster.num_gpus,), 1)
    rerun = dict(
        global_batch_size=global_batch_size, method=method, max_gpus=max_gpus, margin=margin, mfu=mfu,
        num_tokens=num_tokens, price_per_gpu_hour=price_per_gpu_hour, zero_stages=zero_stages,
        offloads=offloads, checkpointing=checkpointing, attn_impls=attn_impls,
        host_memory_bytes_per_node=host_memory_bytes_per_node, num_runners_up=num_runners_up,
        num_rejected=num_rejected, allow_longer=allow_longer, fsdp_configs=fsdp_configs)
    if chosen_method is None:
        failure = no_fit(search, methods, counts, zero_stages, offloads, checkpointing, attn_impls, skipped)
        if recipes:
            rec = _with_recipe_knobs(model, base, cluster, fixed_knobs, rerun)
            if rec is not None:
                return rec
        raise failure
    ranked = sorted((s for lst in per_method.values() for s in lst), key=lambda s: s.key)
    best = ranked[0]
    rec = explain(search, best, ranked[1:k], per_method, auto=auto, counts=counts, skipped=skipped,
                  fa2=(fa2_ok, fa2_reason), attn_impls=attn_impls, num_rejected=num_rejected)
    if dropout_note and rec.plan.train.method is not Method.FULL:
        rec = replace(rec, why=rec.why + (dropout_note,),
                      estimate=replace(rec.estimate, notes=rec.estimate.notes + (dropout_note,)))
    if recipes:
        rec = _faster_with_recipe_knobs(model, base, cluster, fixed_knobs, rerun, search, best, rec,
                                        (counts, zero_stages, offloads, checkpointing, attn_impls))
    # --task grpo: whether to colocate vLLM's generation beside the trainer, and why (plan/generation_choice.py)
    rec = replace(rec, why=rec.why + tuple(generation_advice(model, rec.plan.train, rec.plan.cluster, margin)))
    return rec


def _with_recipe_knobs(model: ModelSpec, base: TrainSpec, cluster: Cluster, fixed: frozenset[str],
                       kwargs: dict) -> Recommendation | None:
    """The first recipe variant (plan/recipes.py) with a plan that fits, its sentence first in ``why``."""
    host = kwargs["host_memory_bytes_per_node"]
    host_known = (host if host is not None else cluster.host_memory_bytes_per_node) is not None
    for train, knobs in recipes.variants(base, fixed, host_ram_known=host_known):
        try:
            rec = recommend(model, train, cluster, recipes=False, **kwargs)
        except PlannerError:  # NoPlanFits, or a variant no layout accepts
            continue
        line = recipes.why(knobs, base)
        return replace(rec, why=(line,) + rec.why, estimate=replace(rec.estimate, notes=rec.estimate.notes + (line,)))
    return None


def _faster_with_recipe_knobs(model: ModelSpec, base: TrainSpec, cluster: Cluster, fixed: frozenset[str],
                              kwargs: dict, search: Searcher, best, asked: Recommendation,
                              space: tuple) -> Recommendation:
    """The fastest loss knob (plan/faster.py) whose plan beats ``asked`` by faster.MIN_SPEEDUP, with its sentence
    first in ``why`` and the plan as asked first among the runners-up; ``asked`` when none does."""
    chosen: tuple[Recommendation, tuple[str, str]] | None = None
    for train, knob in faster.variants(base, fixed):
        try:
            if faster.faster_fits(search, train, best, *space) is None:
                continue
            rec = recommend(model, train, cluster, recipes=False, **kwargs)
        except PlannerError:  # a combination the estimator refuses (e.g. chunked-ce with Gemma 2's softcapping)
            continue
        speed = rec.estimate.throughput.tokens_per_s_per_gpu
        if rec.plan.train.method is not asked.plan.train.method or speed < (
                asked.estimate.throughput.tokens_per_s_per_gpu * (1.0 + faster.MIN_SPEEDUP)):
            continue  # a knob may speed up the method chosen, never change it
        if chosen is None or speed > chosen[0].estimate.throughput.tokens_per_s_per_gpu:
            chosen = (rec, knob)
    if chosen is None:
        return asked
    rec, knob = chosen
    line = faster.why(knob, asked, rec)
    return replace(rec, why=(line,) + rec.why, runners_up=((faster.as_runner_up(asked),) + rec.runners_up)[:kwargs["num_runners_up"]],
                   estimate=replace(rec.estimate, notes=rec.estimate.notes + (line,)),
                   num_estimates=rec.num_estimates + asked.num_estimates)


def _peft_lora_dropout(model: ModelSpec, base: TrainSpec, methods: tuple[Method, ...]) -> tuple[TrainSpec, str]:
    """LoRA dropout 0 where peft needs it: on a mixture of experts whose LoRA targets include the fused expert
    tensors or the router, peft uses lora.ParamWrapper, which refuses any lora_dropout (one value for the whole
    LoraConfig; planner.estimate.count.params.check_lora_dropout). Returns the base spec and the note saying so."""
    if not base.lora.dropout or all(m is Method.FULL for m in methods):
        return base, ""
    from planner.estimate.count.params import count_params, param_wrapped

    wrapped = param_wrapped(count_params(model), base.lora)
    if not wrapped:
        return base, ""
    note = (f"LoRA dropout 0 instead of {base.lora.dropout:g}: peft adapts this mixture of experts' expert and "
            "router parameters with lora.ParamWrapper, which refuses any lora_dropout.")
    return replace(base, lora=replace(base.lora, dropout=0.0)), note


def gpus_per_node(cluster: Cluster) -> int:
    """GPUs per node when the search grows the cluster: what --gpus/--nodes say for a multi-node cluster;
    for one node, the common 8-GPU server (DGX/HGX), or --gpus itself when that is more."""
    if cluster.num_nodes > 1:
        return cluster.num_gpus_per_node
    return max(GPUS_PER_NODE, cluster.num_gpus)


def gpu_count_candidates(cluster: Cluster, g: int, max_gpus: int | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """GPU counts to search and the reasons others were skipped. Without ``max_gpus``: only ``--gpus``."""
    n0, per_node = cluster.num_gpus, gpus_per_node(cluster)
    if max_gpus is None:
        if g % n0:
            raise PlannerError(
                f"--global-batch-size {g} is not divisible by the {n0} data-parallel ranks (--gpus); "
                f"use a multiple of {n0}, such as {n0 * max(1, round(g / n0))}."
            )
        return (n0,), ()
    if max_gpus < n0:
        raise PlannerError(f"--max-gpus ({max_gpus}) must be at least --gpus ({n0}).")
    if max_gpus > 1_000_000:
        raise PlannerError(f"--max-gpus must be at most 1000000, got {max_gpus}.")
    cands = {n0}
    n = n0
    while n * 2 <= max_gpus:
        n *= 2
        cands.add(n)
    counts, skipped = [], []
    for n in sorted(cands):
        if n > per_node and n % per_node:
            skipped.append(f"{n} GPUs do not fill whole nodes of {per_node}")
        elif g % n:
            skipped.append(f"{n} GPUs: global batch {g} is not divisible by {n} data-parallel ranks")
        else:
            counts.append(n)
    if not counts:
        raise PlannerError(
            f"--global-batch-size {g} is not divisible by any GPU count searched ({n0} to {max_gpus}); "
            f"use a multiple of {n0}."
        )
    return tuple(counts), tuple(skipped)
