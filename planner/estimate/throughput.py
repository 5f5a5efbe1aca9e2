"""Throughput, time and cost of one training configuration: FLOPs per token, step time, tokens/s, cost.

The step is modelled as four serial parts on every rank (no overlap is assumed, so the figure is an upper
bound on step time where DeepSpeed's ``overlap_comm`` or DDP's bucketed all-reduce hide part of the traffic):

    step = compute (+ QLoRA dequantization) + ZeRO communication + host-device transfers + CPU optimizer

``mfu`` is the share of the GPU's peak dense FLOP/s that the *executed* FLOPs achieve, recomputation
included (with checkpointing it is what Chowdhery et al. 2022 call hardware FLOPs utilisation).
Never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.errors import PlannerError
from planner.estimate.params import ParamCounts, ParamSplit, count_params, split_params
from planner.estimate.result import Estimate, Throughput
from planner.specs import Cluster, Method, ModelSpec, Offload, TrainSpec
from planner.units import nbytes

# Default utilisation: 0.4 of peak dense FLOP/s. Well-tuned large runs report 38-43% MFU on H100 (Llama 3
# herd paper, Dubey et al. 2024, Table 4: 38-43% BF16 MFU on 8k-16k H100s), 46% on TPU v4 (PaLM,
# Chowdhery et al. 2022, Table 3) and 52% of A100 peak for Megatron's largest runs (Narayanan et al. 2021);
# data-parallel fine-tuning with the Hugging Face stack rarely beats those, so 0.4 is an optimistic-but-
# reachable default. Set --mfu to what your own runs measure.
DEFAULT_MFU = 0.4

# Collectives reach about 80% of the link's unidirectional peak: nccl-tests report all-reduce bus
# bandwidth of roughly 360-480 GB/s on 8 x H100 NVLink 4 (450 GB/s per direction) and 40-45 GB/s per
# 400 Gb/s InfiniBand NIC (50 GB/s). A named assumption, not a measurement of the user's fabric.
COLLECTIVE_EFFICIENCY = 0.8

# Pinned host-device copies reach about 80% of PCIe peak (e.g. ~25 GB/s of 32 GB/s on PCIe 4 x16 in
# CUDA's bandwidthTest); DeepSpeed offload uses pinned buffers.
HOST_TRANSFER_EFFICIENCY = 0.8

# DeepSpeed CPU-Adam (ZeRO-Offload, Ren et al. 2021, arXiv 2101.06840, §4.2; "up to 6x" PyTorch's CPU Adam,
# DeepSpeed issue 479) is bound by host memory bandwidth: per parameter it reads fp32 weight, gradient,
# m and v (16 bytes) and writes weight, m, v and the 16-bit copy (14 bytes), ~30 bytes. At ~60 GB/s
# sustained on a shared dual-socket host that is ~2e9 parameters per second per node.
CPU_ADAM_PARAMS_PER_S_PER_NODE = 2_000_000_000

# QLoRA dequantizes each 4-bit weight to the compute dtype before every matmul (bitsandbytes
# functional.dequantize_4bit): it reads 4 bits plus the block constants and writes 16 bits, ~2.6 bytes of
# memory traffic per quantized weight per pass, bound by GPU memory bandwidth.
DEQUANT_BYTES_PER_PARAM = 2.6

SECONDS_PER_HOUR = 3600


# Input bounds (issue 14 item 9): below 0.1% MFU or above 10^9 per GPU-hour is a typo, not a plan, and such
# values overflowed time and cost to Infinity in --json. 10^21 tokens is ~100,000 x the largest corpora.
MIN_MFU = 0.001
MAX_PRICE_PER_GPU_HOUR = 1e9
MAX_TOKENS = 10**21


def validate_mfu(mfu: float) -> None:
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


# ------------------------------------------------------------------------------------------ FLOPs


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token, by pass. ``total`` is what the GPU executes."""

    forward: float
    backward: float
    recompute: float
    num_matmul_params: int  # weights one token multiplies (active experts only, output head included)

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute


def _head_matmul_params(counts: ParamCounts, model: ModelSpec) -> int:
    head = counts.head
    if head is not None and head.in_features and head.out_features:
        return head.in_features * head.out_features
    return model.vocab_size * model.hidden_size


def flops_per_token(model: ModelSpec, train: TrainSpec, counts: ParamCounts, split: ParamSplit) -> FlopsPerToken:
    """Kaplan et al. 2020 (arXiv 2001.08361, Table 1) and Narayanan et al. 2021 (arXiv 2104.04473, §5.1):
    a matmul with P weights costs 2P FLOPs per token forward and 4P backward (2P for the input gradient,
    2P for the weight gradient); attention scores and their weighted sum cost 4*s*d_attn per layer forward
    (12*L*s*d_attn for training; counted without the causal half, the convention of Chowdhery et al. 2022,
    Appendix B). Embedding lookups and norms are not matmuls; the output head is (tied or not).
    Full checkpointing re-runs each decoder layer's forward once during backward.
    LoRA/QLoRA: frozen weights skip their weight-gradient matmul (Hu et al. 2021), so the base costs 2P + 2P;
    the adapters cost 6 FLOPs per adapter parameter per token; modules_to_save train in full.
    """
    head = _head_matmul_params(counts, model)
    # Active parameters: routed experts count only top-k of E (ParamCounts.num_active_params).
    # Biases are additions, not multiply-adds: leave them out as Kaplan's and Narayanan's counts do.
    biases = sum(g.num_bias_params for g in counts.linears)
    non_matmul = counts.embedding + counts.norms + counts.other + counts.lm_head + biases
    layer_matmul = max(counts.num_active_params - non_matmul, 0)
    matmul = layer_matmul + head
    d_attn = model.num_heads * model.head_dim
    attn_fwd = 4.0 * model.num_layers * train.seq_len * d_attn
    adapter = split.num_adapter
    forward = 2.0 * matmul + attn_fwd + 2.0 * adapter
    if train.method is Method.FULL:
        backward = 4.0 * matmul + 2.0 * attn_fwd
    else:
        # Input gradients through every matmul (2P), weight gradients only for the adapters (4 per adapter
        # parameter) and for modules_to_save copies (2 per weight).
        backward = 2.0 * matmul + 2.0 * attn_fwd + 4.0 * adapter + 2.0 * split.num_saved
    recompute = 0.0
    if train.grad_checkpointing:
        # transformers checkpoints each decoder layer; the output head is not recomputed.
        recompute = 2.0 * layer_matmul + attn_fwd + 2.0 * adapter
    return FlopsPerToken(forward=forward, backward=backward, recompute=recompute, num_matmul_params=matmul)


# ------------------------------------------------------------------------------------------ step time


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step on one rank, by part (serial: no overlap assumed)."""

    compute_s: float  # forward + backward (+ recompute) at the assumed utilisation
    dequant_s: float  # QLoRA: 4-bit -> 16-bit weight dequantization, memory-bandwidth bound
    communication_s: float  # ZeRO/DDP collectives over the interconnect
    offload_transfer_s: float  # host <-> device copies (optimizer/parameter offload)
    cpu_optimizer_s: float  # CPU-Adam on the offloaded partition
    tokens_per_rank: float  # tokens one rank processes per step
    communication_bytes: float  # bytes each rank moves over the interconnect per step
    host_transfer_bytes: float  # bytes each rank moves over PCIe per step

    @property
    def total_s(self) -> float:
        return self.compute_s + self.dequant_s + self.communication_s + self.offload_transfer_s + self.cpu_optimizer_s


def collective_bytes_per_s(cluster: Cluster) -> float:
    """Per-rank bandwidth of a ring collective: NVLink/PCIe inside a node; across nodes the node's NICs are
    shared by its GPUs, and the slower of the two bounds the ring."""
    bw = float(cluster.gpu.intra_node_bytes_per_s)
    if cluster.num_nodes > 1:
        bw = min(bw, cluster.inter_node_bytes_per_s / cluster.num_gpus_per_node)
    return bw * COLLECTIVE_EFFICIENCY


def _communication_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """Bytes one rank sends (= receives) per optimizer step, ring algorithms ((N-1)/N of the buffer per
    reduce-scatter or all-gather; an all-reduce is both). ZeRO paper (Rajbhandari et al. 2020, §7):
    data parallelism and stages 1-2 move 2 x the 16-bit parameters per step, stage 3 3 x per micro-batch
    (all-gather in forward, all-gather in backward, reduce-scatter of gradients)."""
    if num_ranks == 1:
        return 0.0
    ring = (num_ranks - 1) / num_ranks
    compute = train.precision.compute_dtype
    adapter_dtype = "fp32" if train.method is not Method.FULL else compute
    grad_b = nbytes(split.num_trainable - split.num_adapter, compute) + nbytes(split.num_adapter, adapter_dtype)
    stage = train.zero_stage
    if stage in (0, 1):
        # DDP / ZeRO-1: gradients accumulate locally, one all-reduce (ZeRO-1: reduce-scatter + all-gather of
        # the updated 16-bit parameters, the same volume) at the accumulation boundary.
        return 2 * ring * grad_b
    if stage == 2:
        # ZeRO-2 reduce-scatters every micro-batch's gradients (stage_1_and_2.py reduces IPG buckets in each
        # backward) and all-gathers the updated parameters once per step.
        return accum * ring * grad_b + ring * grad_b
    # ZeRO-3: every micro-batch all-gathers all parameters for forward and again for backward, and
    # reduce-scatters the gradients; frozen base weights are gathered too.
    full_param_b = nbytes(split.num_params, compute) + nbytes(split.num_adapter, adapter_dtype)
    return accum * ring * (2 * full_param_b + grad_b)


def _host_transfer_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """ZeRO-Offload (Ren et al. 2021): 16-bit gradients of the rank's partition go to the host (every
    micro-batch at stages 2-3, which cannot keep full gradients; once at stage 1) and updated 16-bit
    parameters come back once per step. ZeRO-Infinity parameter offload (Rajbhandari et al. 2021) also
    copies the rank's 16-bit parameter partition to the GPU for forward and for backward."""
    if train.offload is Offload.NONE:
        return 0.0
    compute = train.precision.compute_dtype
    part_grads = nbytes(split.num_trainable, compute) / num_ranks
    grad_copies = accum if train.zero_stage >= 2 else 1
    total = grad_copies * part_grads + part_grads  # gradients out, updated parameters in
    if train.offload is Offload.OPTIMIZER_PARAMS:
        total += accum * 2 * nbytes(split.num_params, compute) / num_ranks
    return total


def step_time(
    model: ModelSpec,
    train: TrainSpec,
    cluster: Cluster,
    *,
    mfu: float,
    global_batch_size: int | None = None,
    counts: ParamCounts | None = None,
    split: ParamSplit | None = None,
) -> StepTime:
    """One optimizer step on one rank. ``global_batch_size`` (sequences per step over all ranks) defaults
    to micro-batch x accumulation x ranks."""
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
    tokens = accum * train.micro_batch * train.seq_len
    fpt = flops_per_token(model, train, counts, split)
    peak = cluster.gpu.dense_flops(train.precision.compute_dtype)
    if peak <= 0:
        raise PlannerError(f"GPU {cluster.gpu.name!r} has no dense FLOP/s figure for {train.precision.value}.")
    compute_s = tokens * fpt.total / (peak * mfu)
    dequant_s = 0.0
    if train.method is Method.QLORA and split.num_quantized:
        passes = 3 if train.grad_checkpointing else 2  # forward, backward (+ recomputed forward)
        bw = cluster.gpu.memory_bandwidth_bytes_per_s or 1
        dequant_s = accum * passes * split.num_quantized * DEQUANT_BYTES_PER_PARAM / bw
    comm_b = _communication_bytes(train, split, n, accum)
    comm_s = comm_b / collective_bytes_per_s(cluster) if comm_b else 0.0
    host_b = _host_transfer_bytes(train, split, n, accum)
    host_s = host_b / (cluster.gpu.host_bytes_per_s * HOST_TRANSFER_EFFICIENCY) if host_b else 0.0
    cpu_s = 0.0
    if train.offload is not Offload.NONE:
        # The node's CPUs update the partitions of all its ranks.
        params_per_node = split.num_trainable / n * cluster.num_gpus_per_node
        cpu_s = params_per_node / CPU_ADAM_PARAMS_PER_S_PER_NODE
    return StepTime(
        compute_s=compute_s,
        dequant_s=dequant_s,
        communication_s=comm_s,
        offload_transfer_s=host_s,
        cpu_optimizer_s=cpu_s,
        tokens_per_rank=tokens,
        communication_bytes=comm_b,
        host_transfer_bytes=host_b,
    )


def throughput_from_step(
    st: StepTime, fpt: FlopsPerToken, cluster: Cluster, *, mfu: float, num_tokens: int, price_per_gpu_hour: float
) -> Throughput:
    tokens_per_s_per_gpu = st.tokens_per_rank / st.total_s if st.total_s > 0 else 0.0
    cluster_tps = tokens_per_s_per_gpu * cluster.num_gpus
    total_time_s = num_tokens / cluster_tps if num_tokens and cluster_tps > 0 else 0.0
    cost = total_time_s / SECONDS_PER_HOUR * cluster.num_gpus * price_per_gpu_hour
    return Throughput(
        flops_per_token=fpt.total,
        tokens_per_s_per_gpu=tokens_per_s_per_gpu,
        step_time_s=st.total_s,
        mfu=mfu,
        num_tokens=num_tokens,
        total_time_s=total_time_s,
        cost=cost,
        price_per_gpu_hour=price_per_gpu_hour,
    )


def throughput(
    est: Estimate,
    *,
    mfu: float = DEFAULT_MFU,
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
