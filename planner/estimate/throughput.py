"""Throughput, time and cost of one training configuration: FLOPs per token, step time, tokens/s, cost.

One optimizer step on one rank is modelled phase by phase (issue 22), each micro-batch:

    matmuls      dense-layer and output-head FLOPs at the GPU kind's achievable matmul efficiency
    attention    the score and weighted-sum FLOPs at the attention kernel's efficiency (causal kernels do half)
    elementwise  norms, activations, residual adds and the loss: bytes moved / HBM bandwidth
    (QLoRA)      4-bit -> 16-bit weight dequantization, bytes / HBM bandwidth

then per step the gradient and parameter collectives, of which only the part the engine cannot hide behind
compute is exposed (DDP buckets, ZeRO-3 prefetch, DeepSpeed's overlap_comm: traffic.exposed_communication_s),
the optimizer step (memory-bound), offload traffic over PCIe and CPU-Adam.

``mfu`` is an override: given, every executed FLOP (recomputation included; Chowdhery et al. 2022's hardware
FLOPs utilisation) runs at that share of peak and it stands for all GPU work (elementwise kernels and the
optimizer step included, as an end-to-end measured utilisation does); communication, offload and CPU-Adam
are still added. ``mfu=None`` is the per-phase model above. ``DEFAULT_MFU`` is what the command line passes
when --mfu is not given (kept at 0.4 until the CLI switches its default to the per-phase model).
FLOPs per token are counted in ``flops`` and the bytes each phase and collective moves in ``traffic``
(both re-exported here). Never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner import catalog
from planner.errors import PlannerError
from planner.estimate import fsdp2_traffic
from planner.estimate.count.params import ParamCounts, ParamSplit, count_params, split_params
from planner.estimate.flops import FlopsPerToken, flops_per_token
from planner.estimate.result import Estimate, StepBreakdown, Throughput
from planner.estimate.selective import attention_share, layer_share
from planner.estimate.traffic import (
    COLLECTIVE_EFFICIENCY,
    DEQUANT_BYTES_PER_PARAM,
    EAGER_SCORE_BYTES,
    ELEMENTWISE_BWD_BYTES_PER_INTER,
    ELEMENTWISE_FWD_BYTES_PER_INTER,
    HOST_TRANSFER_EFFICIENCY,
    LOSS_BYTES_PER_LOGIT,
    NORM_BYTES_PER_HIDDEN,
    OPTIMIZER_BYTES_PER_PARAM,
    RESIDUAL_BYTES_PER_HIDDEN,
    ROPE_BYTES_PER_QK,
    collective_bytes_per_s,
    communication_bytes,
    elementwise_bytes_per_token,
    exposed_communication_s,
    host_transfer_bytes,
    reduction_bytes,
)
from planner.specs import AttnImpl, Cluster, GpuSpec, Method, ModelSpec, Offload, TrainSpec

__all__ = [
    "COLLECTIVE_EFFICIENCY", "CPU_ADAM_PARAMS_PER_S_PER_NODE", "DEFAULT_KERNEL_EFFICIENCY", "DEFAULT_MFU",
    "DEQUANT_BYTES_PER_PARAM", "EAGER_SCORE_BYTES", "ELEMENTWISE_BWD_BYTES_PER_INTER",
    "ELEMENTWISE_FWD_BYTES_PER_INTER", "HOST_TRANSFER_EFFICIENCY", "KERNEL_EFFICIENCY", "LOSS_BYTES_PER_LOGIT",
    "MATMUL_HALF_HIDDEN", "MAX_PRICE_PER_GPU_HOUR", "MAX_TOKENS", "MIN_MFU", "NORM_BYTES_PER_HIDDEN",
    "OPTIMIZER_BYTES_PER_PARAM", "RESIDUAL_BYTES_PER_HIDDEN", "ROPE_BYTES_PER_QK", "SECONDS_PER_HOUR",
    "FlopsPerToken", "KernelEfficiency", "StepOnGpu", "StepTime", "collective_bytes_per_s", "flops_per_token",
    "kernel_efficiency", "matmul_efficiency", "step_on_gpu", "step_time", "step_time_on", "throughput",
    "throughput_from_step", "validate_mfu",
    "validate_price", "validate_tokens",
]

# The default is the per-phase model (None): against the published runs of benchmarks/published_runs.csv it is
# within ~7% (median, held-back half, reports/time_accuracy.md) where one global utilisation of 0.4 was ~28%
# pessimistic. --mfu X overrides it with every executed FLOP at X of peak dense FLOP/s (well-tuned large runs
# report 38-43% MFU on H100: Llama 3 herd paper, Dubey et al. 2024, Table 4; 46% on TPU v4: PaLM, Chowdhery et
# al. 2022, Table 3; 52% of A100 peak for Megatron's largest runs: Narayanan et al. 2021).
DEFAULT_MFU: float | None = None

# DeepSpeed CPU-Adam (ZeRO-Offload, Ren et al. 2021, arXiv 2101.06840, §4.2; "up to 6x" PyTorch's CPU Adam,
# DeepSpeed issue 479) is bound by host memory bandwidth: per parameter it reads fp32 weight, gradient,
# m and v (16 bytes) and writes weight, m, v and the 16-bit copy (14 bytes), ~30 bytes. At ~60 GB/s
# sustained on a shared dual-socket host that is ~2e9 parameters per second per node.
CPU_ADAM_PARAMS_PER_S_PER_NODE = 2_000_000_000


# ------------------------------------------------------------------------------------------ per-phase model


@dataclass(frozen=True)
class KernelEfficiency:
    """Shares of the GPU's peak dense 16-bit FLOP/s that training kernels reach on one GPU kind.

    ``matmul``: large bf16/fp16 GEMMs inside a training step (cuBLAS; clocks under sustained load).
    ``attention``: a fused attention kernel (FlashAttention-2 / SDPA) forward + backward, counted as the
    FlashAttention papers count it (causal: half the score FLOPs; backward 2.5 x forward)."""

    matmul: float
    attention: float
    source: str


# Per GPU kind, from the catalog (planner/catalog/gpus.json ``kernel_efficiency``, each with its provenance):
# matmul calibrated on the calibration half of benchmarks/published_runs.csv (issue 22: at most half the table;
# reports/time_accuracy.md has the held-back error), where A100 runs of llm-foundry and torchtitan sustain a
# much higher share of their 312 TFLOP/s than H100 runs of their 989; attention from the FlashAttention-2 and -3
# papers. Matched by name prefix (``calibrate`` in benchmarks/time_vs_published.py patches prefixes).
KERNEL_EFFICIENCY: tuple[tuple[str, KernelEfficiency], ...] = tuple(
    (name, KernelEfficiency(matmul=matmul, attention=attention, source=source))
    for name, matmul, attention, source in catalog.kernel_efficiencies()
)
_A100 = dict(KERNEL_EFFICIENCY)["a100-sxm-80gb"]
_H100 = dict(KERNEL_EFFICIENCY)["h100-sxm-80gb"]
# Every other GPU: no published run checks it; the H100 figures are the lower, safer pair.
DEFAULT_KERNEL_EFFICIENCY = KernelEfficiency(matmul=_H100.matmul, attention=_H100.attention,
                                             source="no published run on this GPU kind: H100 figures assumed")

# A GEMM with a small inner dimension reaches less of peak (fewer tiles in flight per k-step, the prologue
# and epilogue weigh more): efficiency x h / (h + MATMUL_HALF_HIDDEN) for hidden size h. Calibrated with
# the matmul shares above (grid search minimising the mean |log error| over the calibration half:
# `python benchmarks/time_vs_published.py --calibrate`); 4096-wide layers lose 11%, 768-wide 40%.
MATMUL_HALF_HIDDEN = 512

SECONDS_PER_HOUR = 3600


# Input bounds (issue 14 item 9): below 0.1% MFU or above 10^9 per GPU-hour is a typo, not a plan, and such
# values overflowed time and cost to Infinity in --json. 10^21 tokens is ~100,000 x the largest corpora.
MIN_MFU = 0.001
MAX_PRICE_PER_GPU_HOUR = 1e9
MAX_TOKENS = 10**21


def validate_mfu(mfu: float | None) -> None:
    """``None`` asks for the per-phase model; a number overrides it."""
    if mfu is None:
        return
    if (
        not isinstance(mfu, (int, float))
        or isinstance(mfu, bool)
        or math.isnan(mfu)
        or not MIN_MFU <= mfu <= 1.0
    ):
        raise PlannerError(f"--mfu must be in (0, 1] and at least {MIN_MFU} (a share of peak FLOP/s), got {mfu}.")


def validate_price(price_per_gpu_hour: float) -> None:
    if (
        not isinstance(price_per_gpu_hour, (int, float))
        or math.isnan(price_per_gpu_hour)
        or math.isinf(price_per_gpu_hour)
        or not 0 <= price_per_gpu_hour <= MAX_PRICE_PER_GPU_HOUR
    ):
        raise PlannerError(
            f"--price-per-gpu-hour must be a finite number from 0 to {MAX_PRICE_PER_GPU_HOUR:,.0f}, "
            f"got {price_per_gpu_hour}."
        )


def validate_tokens(num_tokens: int) -> None:
    if num_tokens < 0:
        raise PlannerError(f"--tokens must not be negative, got {num_tokens}.")
    if num_tokens > MAX_TOKENS:
        raise PlannerError(f"--tokens must be at most {MAX_TOKENS:.0e} (beyond any training run), got {num_tokens:.3g}.")


# ------------------------------------------------------------------------------------------ step time


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step on one rank, by phase. The phases run one after another, except the
    collectives: of ``communication_s`` (all of the step's collectives at the link's bandwidth) only
    ``exposed_communication_s`` adds to the step, the rest hides behind compute as the engine overlaps it."""

    compute_s: float  # per-phase model: matmuls; with --mfu: every executed FLOP at that utilisation
    dequant_s: float  # QLoRA: 4-bit -> 16-bit weight dequantization, memory-bandwidth bound
    communication_s: float  # ZeRO/DDP collectives over the interconnect, as if none were overlapped
    offload_transfer_s: float  # host <-> device copies (optimizer/parameter offload)
    cpu_optimizer_s: float  # CPU-Adam on the offloaded partition
    tokens_per_rank: float  # tokens one rank processes per step
    communication_bytes: float  # bytes each rank moves over the interconnect per step
    host_transfer_bytes: float  # bytes each rank moves over PCIe per step
    attention_s: float  # per-phase model: attention kernels (0 with --mfu)
    elementwise_s: float  # per-phase model: norms, activations, residuals, loss (0 with --mfu)
    optimizer_s: float  # per-phase model: the GPU optimizer step, memory-bound (0 with --mfu)
    exposed_communication_s: float  # the part of communication_s that compute does not hide
    hardware_flops_utilisation: float  # executed FLOPs / (peak x step time): what the estimate amounts to
    modelled: bool  # True: the per-phase model; False: the --mfu override

    @property
    def gpu_compute_s(self) -> float:
        return self.compute_s + self.attention_s + self.elementwise_s + self.dequant_s + self.optimizer_s

    @property
    def total_s(self) -> float:
        return self.gpu_compute_s + self.exposed_communication_s + self.offload_transfer_s + self.cpu_optimizer_s


def kernel_efficiency(gpu_name: str) -> KernelEfficiency:
    """The kernel efficiencies of a catalog GPU (by name prefix), or the default pair."""
    for prefix, eff in KERNEL_EFFICIENCY:
        if gpu_name.startswith(prefix):
            return eff
    return DEFAULT_KERNEL_EFFICIENCY


def matmul_efficiency(gpu_name: str, hidden_size: int) -> float:
    """Share of peak the model's matmuls reach: the GPU kind's figure, lower for narrow layers."""
    return kernel_efficiency(gpu_name).matmul * hidden_size / (hidden_size + MATMUL_HALF_HIDDEN)


def step_time(
    model: ModelSpec,
    train: TrainSpec,
    cluster: Cluster,
    *,
    mfu: float | None = None,
    global_batch_size: int | None = None,
    counts: ParamCounts | None = None,
    split: ParamSplit | None = None,
) -> StepTime:
    """One optimizer step on one rank. ``mfu=None``: the per-phase model; a number: the override (module
    docstring). ``global_batch_size`` (sequences per step over all ranks) defaults to micro-batch x
    accumulation x ranks."""
    validate_mfu(mfu)
    counts = counts if counts is not None else count_params(model)
    split = split if split is not None else split_params(counts, train)
    n = cluster.num_gpus
    if global_batch_size is None:
        accum = float(train.grad_accum)
    else:
        if global_batch_size < 1:
            raise PlannerError(f"--global-batch-size must be at least 1, got {global_batch_size}.")
        accum = global_batch_size / (train.micro_batch * n)
    return step_time_on(step_on_gpu(model, train, cluster.gpu, mfu=mfu, accum=accum, counts=counts, split=split),
                        cluster)


@dataclass(frozen=True)
class StepOnGpu:
    """The part of ``step_time`` that one GPU kind, one train spec and its accumulation fix, whatever the
    number of GPUs: a search over GPU counts (plan/compare_gpus.py) computes it once per layout and GPU and
    finishes it per count with ``step_time_on``, the same arithmetic in the same order as one ``step_time``."""

    model: ModelSpec
    train: TrainSpec
    split: ParamSplit
    mfu: float | None
    accum: float
    tokens: float
    fpt_total: float
    peak: float
    bw: float
    compute_s: float
    attention_s: float
    elementwise_s: float
    dequant_s: float
    bwd_share: float


def step_on_gpu(model: ModelSpec, train: TrainSpec, gpu: GpuSpec, *, mfu: float | None, accum: float,
                counts: ParamCounts, split: ParamSplit) -> StepOnGpu:
    """``step_time``'s phases that do not depend on the GPU count (``mfu`` already validated)."""
    tokens = accum * train.micro_batch * train.seq_len
    fpt = flops_per_token(model, train, counts, split)
    peak = gpu.dense_flops(train.precision.matmul_dtype)
    if peak <= 0:
        raise PlannerError(f"GPU {gpu.name!r} has no dense FLOP/s figure for {train.precision.value}.")
    bw = gpu.memory_bandwidth_bytes_per_s or 1
    attention_s = elementwise_s = 0.0
    if mfu is not None:
        compute_s = tokens * fpt.total / (peak * mfu)
    else:
        eff = kernel_efficiency(gpu.name)
        passes = 1 + attention_share(train, model.num_layers)
        attn_fwd = 4.0 * model.num_layers * train.seq_len * model.num_heads * model.head_dim
        attn_counted = attn_fwd * (3 + passes - 1)  # what flops_per_token counts: fwd, 2 x bwd, recompute
        compute_s = tokens * (fpt.total - attn_counted) / (peak * matmul_efficiency(gpu.name, model.hidden_size))
        if train.attn_impl is AttnImpl.EAGER:
            # The full score matrix (masked, not skipped) as batched GEMMs at the matmul efficiency.
            attention_s = tokens * attn_counted / (peak * eff.matmul)
        else:
            # Causal fused kernels skip the masked half; FlashAttention's backward is 2.5 x its forward.
            attention_s = tokens * (attn_fwd / 2) * (passes + 2.5) / (peak * eff.attention)
        elementwise_s = tokens * elementwise_bytes_per_token(model, train) / bw
    dequant_s = 0.0
    if train.method is Method.QLORA and split.num_quantized:
        # forward, backward (+ the recomputed layers' forward)
        passes = 2 + layer_share(train, model.num_layers)
        dequant_s = accum * passes * split.num_quantized * DEQUANT_BYTES_PER_PARAM / bw
    total = fpt.total
    return StepOnGpu(model=model, train=train, split=split, mfu=mfu, accum=accum, tokens=tokens, fpt_total=total,
                     peak=peak, bw=bw, compute_s=compute_s, attention_s=attention_s, elementwise_s=elementwise_s,
                     dequant_s=dequant_s, bwd_share=(fpt.backward + fpt.recompute) / total if total else 0.0)


def step_time_on(part: StepOnGpu, cluster: Cluster) -> StepTime:
    """``step_time`` on ``cluster`` (of ``part``'s GPU kind) from its GPU-count-free part."""
    model, train, split, accum, tokens = part.model, part.train, part.split, part.accum, part.tokens
    n = cluster.num_gpus
    optimizer_s = 0.0
    # the optimizer steps on the host: DeepSpeed's offload, or FSDP2's CPUOffloadPolicy (torch AdamW on the CPU;
    # its rate is taken as DeepSpeed CPU Adam's below, which torch's foreach AdamW on the CPU does not beat)
    host_optimizer = train.offload is not Offload.NONE or (train.uses_fsdp2 and
                                                           train.parallelism.fsdp_config.cpu_offload)
    if part.mfu is None and not host_optimizer:
        # ZeRO 1-3 and FSDP2 step the rank's share; DeepSpeed at stage 0 (ds_stage0.py), like DDP, steps every parameter
        sharded = (train.uses_deepspeed and train.zero_stage > 0) or train.uses_fsdp2
        local = split.num_trainable / n if sharded else split.num_trainable
        optimizer_s = local * OPTIMIZER_BYTES_PER_PARAM.get(train.optimizer.value, 28) / part.bw
    comm_b = communication_bytes(train, split, n, accum)
    link = collective_bytes_per_s(cluster)
    comm_s = comm_b / link if comm_b else 0.0
    reduce_s = reduction_bytes(train, split, n, accum) / link if comm_b else 0.0
    if train.uses_fsdp2 and train.parallelism.fsdp_config.replicate_degree > 1:  # HSDP: two groups, two links
        intra = float(cluster.gpu.intra_node_bytes_per_s) * COLLECTIVE_EFFICIENCY
        inter = float(cluster.inter_node_bytes_per_s) * COLLECTIVE_EFFICIENCY
        comm_s = fsdp2_traffic.hsdp_seconds(train, split, cluster, accum, comm_b, intra, inter)
        reduce_s = fsdp2_traffic.hsdp_seconds(train, split, cluster, accum, reduction_bytes(train, split, n, accum),
                                              intra, inter)
    gpu_s = part.compute_s + part.attention_s + part.elementwise_s + part.dequant_s
    exposed_s = exposed_communication_s(train, comm_s, accum, gpu_s, part.bwd_share, model.num_layers, reduce_s)
    host_b = host_transfer_bytes(train, split, n, accum)
    host_s = host_b / (cluster.gpu.host_bytes_per_s * HOST_TRANSFER_EFFICIENCY) if host_b else 0.0
    cpu_s = 0.0
    if host_optimizer:
        # The node's CPUs update the partitions of all its ranks.
        params_per_node = split.num_trainable / n * cluster.num_gpus_per_node
        cpu_s = params_per_node / CPU_ADAM_PARAMS_PER_S_PER_NODE
    total_s = gpu_s + optimizer_s + exposed_s + host_s + cpu_s
    hfu = tokens * part.fpt_total / (part.peak * total_s) if total_s > 0 else 0.0
    return StepTime(
        compute_s=part.compute_s,
        dequant_s=part.dequant_s,
        communication_s=comm_s,
        offload_transfer_s=host_s,
        cpu_optimizer_s=cpu_s,
        tokens_per_rank=tokens,
        communication_bytes=comm_b,
        host_transfer_bytes=host_b,
        attention_s=part.attention_s,
        elementwise_s=part.elementwise_s,
        optimizer_s=optimizer_s,
        exposed_communication_s=exposed_s,
        hardware_flops_utilisation=hfu,
        modelled=part.mfu is None,
    )


def throughput_from_step(
    st: StepTime, fpt: FlopsPerToken, cluster: Cluster, *, mfu: float | None, num_tokens: int,
    price_per_gpu_hour: float,
) -> Throughput:
    """``mfu``: the override the step was computed with; with the per-phase model (None) the result's ``mfu``
    is the hardware FLOPs utilisation the estimate amounts to."""
    tokens_per_s_per_gpu = st.tokens_per_rank / st.total_s if st.total_s > 0 else 0.0
    cluster_tps = tokens_per_s_per_gpu * cluster.num_gpus
    total_time_s = num_tokens / cluster_tps if num_tokens and cluster_tps > 0 else 0.0
    cost = total_time_s / SECONDS_PER_HOUR * cluster.num_gpus * price_per_gpu_hour
    return Throughput(
        flops_per_token=fpt.total,
        tokens_per_s_per_gpu=tokens_per_s_per_gpu,
        step_time_s=st.total_s,
        mfu=st.hardware_flops_utilisation if mfu is None else mfu,
        num_tokens=num_tokens,
        total_time_s=total_time_s,
        cost=cost,
        price_per_gpu_hour=price_per_gpu_hour,
        step=StepBreakdown(
            time_model="per-phase" if st.modelled else "mfu", matmul_s=st.compute_s, attention_s=st.attention_s,
            elementwise_s=st.elementwise_s, dequant_s=st.dequant_s, optimizer_s=st.optimizer_s,
            exposed_communication_s=st.exposed_communication_s,
            hidden_communication_s=max(0.0, st.communication_s - st.exposed_communication_s),
            offload_transfer_s=st.offload_transfer_s, cpu_optimizer_s=st.cpu_optimizer_s,
        ),
    )


def throughput(
    est: Estimate,
    *,
    mfu: float | None = DEFAULT_MFU,
    num_tokens: int = 0,
    price_per_gpu_hour: float = 0.0,
    global_batch_size: int | None = None,
) -> Throughput:
    """Tokens/s per GPU, step time, time for ``num_tokens`` and its cost at ``price_per_gpu_hour``."""
    validate_mfu(mfu)
    validate_price(price_per_gpu_hour)
    validate_tokens(num_tokens)
    counts = count_params(est.model)
    split = split_params(counts, est.train)
    st = step_time(
        est.model, est.train, est.cluster, mfu=mfu, global_batch_size=global_batch_size, counts=counts, split=split
    )
    fpt = flops_per_token(est.model, est.train, counts, split)
    return throughput_from_step(
        st, fpt, est.cluster, mfu=mfu, num_tokens=num_tokens, price_per_gpu_hour=price_per_gpu_hour
    )
