"""Throughput, time and cost of one training configuration: FLOPs per token, step time, tokens/s, cost.

One optimizer step on one rank is modelled phase by phase (issue 22), each micro-batch:

    matmuls      dense-layer and output-head FLOPs at the GPU kind's achievable matmul efficiency
    attention    the score and weighted-sum FLOPs at the attention kernel's efficiency (causal kernels do half)
    elementwise  norms, activations, residual adds and the loss: bytes moved / HBM bandwidth
    (QLoRA)      4-bit -> 16-bit weight dequantization, bytes / HBM bandwidth

then per step the gradient and parameter collectives, of which only the part the engine cannot hide behind
compute is exposed (DDP buckets and ZeRO-3/FSDP prefetch overlap; ZeRO-1/2 as planner emits them do not),
the optimizer step (memory-bound), offload traffic over PCIe and CPU-Adam.

``mfu`` is an override: given, every executed FLOP (recomputation included; Chowdhery et al. 2022's hardware
FLOPs utilisation) runs at that share of peak and it stands for all GPU work (elementwise kernels and the
optimizer step included, as an end-to-end measured utilisation does); communication, offload and CPU-Adam
are still added. ``mfu=None`` is the per-phase model above. ``DEFAULT_MFU`` is what the command line passes
when --mfu is not given (kept at 0.4 until the CLI switches its default to the per-phase model).
Never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.errors import PlannerError
from planner.estimate.count.params import ParamCounts, ParamSplit, count_params, split_params
from planner.estimate.result import Estimate, StepBreakdown, Throughput
from planner.specs import AttnImpl, Cluster, Method, ModelSpec, Offload, TrainSpec
from planner.units import nbytes

# The default is the per-phase model (None): against the published runs of benchmarks/published_runs.csv it is
# within ~7% (median, held-back half, reports/time_accuracy.md) where one global utilisation of 0.4 was ~28%
# pessimistic. --mfu X overrides it with every executed FLOP at X of peak dense FLOP/s (well-tuned large runs
# report 38-43% MFU on H100: Llama 3 herd paper, Dubey et al. 2024, Table 4; 46% on TPU v4: PaLM, Chowdhery et
# al. 2022, Table 3; 52% of A100 peak for Megatron's largest runs: Narayanan et al. 2021).
DEFAULT_MFU: float | None = None

# Collectives reach about 80% of the link's unidirectional peak: nccl-tests report all-reduce bus
# bandwidth of roughly 360-480 GB/s on 8 x H100 NVLink 4 (450 GB/s per direction) and 40-45 GB/s per
# 400 Gb/s InfiniBand NIC (50 GB/s), so ~360 GB/s over a node's eight. A named assumption, not a
# measurement of the user's fabric.
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


# Matmul: calibrated on the calibration half of benchmarks/published_runs.csv (issue 22: at most half the
# table; reports/time_accuracy.md has the held-back error), where A100 runs of llm-foundry and torchtitan
# sustain a much higher share of their 312 TFLOP/s than H100 runs of their 989 (the H100's datasheet peak
# assumes boost clocks a 700 W part does not hold under dense GEMMs). Attention: FlashAttention-2 reaches
# 50-73% of A100 peak (Dao 2023, arXiv 2307.08691, abstract) and 35% of H100 peak (Shah et al. 2024,
# FlashAttention-3, arXiv 2407.08608, abstract); the lower end is taken for causal training shapes.
# Keyed by catalog-name prefix: the catalog has no architecture field yet (issue 22 item 2 puts these
# curves there, with measured provenance).
_A100 = KernelEfficiency(matmul=0.76, attention=0.50, source="A100: calibrated (matmul); FlashAttention-2 paper")
_H100 = KernelEfficiency(matmul=0.54, attention=0.35, source="H100: calibrated (matmul); FlashAttention-3 paper")
KERNEL_EFFICIENCY: tuple[tuple[str, KernelEfficiency], ...] = (
    ("a100-", _A100),
    ("a800-", _A100),
    ("h100-", _H100),
    ("h200-", _H100),
)
# Every other GPU: no published run checks it; the H100 figures are the lower, safer pair.
DEFAULT_KERNEL_EFFICIENCY = KernelEfficiency(matmul=_H100.matmul, attention=_H100.attention,
                                             source="no published run on this GPU kind: H100 figures assumed")

# A GEMM with a small inner dimension reaches less of peak (fewer tiles in flight per k-step, the prologue
# and epilogue weigh more): efficiency x h / (h + MATMUL_HALF_HIDDEN) for hidden size h. Calibrated with
# the matmul shares above (grid search minimising the mean |log error| over the calibration half:
# `python benchmarks/time_vs_published.py --calibrate`); 4096-wide layers lose 11%, 768-wide 40%.
MATMUL_HALF_HIDDEN = 512

# Bytes of activation traffic per token and layer outside matmuls and attention, counted kernel by kernel
# as transformers runs them without torch.compile: each kernel reads its inputs and writes its output once
# forward; backward reads the saved input(s) and the incoming gradient and writes one gradient (2 bytes per
# 16-bit element, 4 per fp32 one; GEMM-fused bias). Recomputation repeats the forward bytes.
# Residual adds: two per layer, 3 elements each way = 12 bytes per hidden unit forward, 12 backward.
RESIDUAL_BYTES_PER_HIDDEN = (12, 12)
# Norms, per norm and hidden unit (two per layer). nn.LayerNorm (GPT-2) is one fused kernel: read 2, write 2
# forward; backward reads input and gradient and writes one (6). The RMSNorm of every other catalog family
# (LlamaRMSNorm and its copies) is six eager kernels in fp32: upcast (read 2, write 4), pow (4, 4), mean
# (4), scale (4, 4), downcast (4, 2), weight multiply (2, 2) = 36 forward, and their autograd backward
# ~70 (each op's gradient kernels, two of them accumulating into the same input).
NORM_BYTES_PER_HIDDEN = {"layernorm": (4, 6), "rmsnorm": (36, 70)}
# Rotary embeddings (apply_rotary_pos_emb with rotate_half) on every query and key element: multiply by cos
# (read 2, write 2), negate half (1, 1), concatenate (2, 2), multiply by sin (2, 2), add (4, 2) = 20 bytes
# forward, ~20 backward (the two multiplies' gradients, the slice and negation, the accumulation).
ROPE_BYTES_PER_QK = (20, 20)
# Per intermediate unit: one activation (2 elements forward, 3 backward) for a GPT-2-style MLP; a gated MLP
# (SwiGLU/GeGLU) adds the gate multiply (3 forward, 5 backward).
ELEMENTWISE_FWD_BYTES_PER_INTER = {False: 4, True: 10}  # by gated MLP
ELEMENTWISE_BWD_BYTES_PER_INTER = {False: 6, True: 16}
# The loss over V logits per token: upcast to fp32 (read 2, write 4 bytes per logit), log-softmax (read 4,
# write 4), its backward (read 4, write 4) and the downcast of the gradient (read 4, write 2): ~28 bytes.
LOSS_BYTES_PER_LOGIT = 28
# Eager attention materialises the a x s x s scores: softmax forward reads and writes them (2 + 2 bytes),
# backward reads probabilities and gradient and writes one (6 bytes): ~10 bytes per score element.
EAGER_SCORE_BYTES = 10

# The optimizer step reads and writes every state of the rank's trainable partition once: AdamW with fp32
# master weights reads weight, 16-bit gradient, m, v (4 + 2 + 4 + 4) and writes weight, m, v and the
# 16-bit copy (4 + 4 + 4 + 2) = 28 bytes per parameter (PyTorch's foreach/fused AdamW are one pass of this).
OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28, "paged-adamw": 28, "adamw-8bit": 16, "paged-adamw-8bit": 16,
                             "sgd": 20, "adafactor": 16}

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


def collective_bytes_per_s(cluster: Cluster) -> float:
    """Per-rank bus bandwidth of a ring collective. Inside a node each GPU's NVLink/PCIe carries its ring
    traffic. Across nodes NCCL runs one ring per NIC, each crossing from node to node once, so a node's NICs
    together carry what one rank sends: the node's inter-node bandwidth, not a GPU's share of it, bounds the
    ring (nccl-tests bus bandwidth across 8-GPU nodes is close to the sum of their NICs, ~360 GB/s for
    8 x 400 Gb/s)."""
    bw = float(cluster.gpu.intra_node_bytes_per_s)
    if cluster.num_nodes > 1:
        bw = min(bw, float(cluster.inter_node_bytes_per_s))
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


def _elementwise_bytes_per_token(model: ModelSpec, train: TrainSpec) -> float:
    """HBM bytes per token of the kernels that are neither matmuls nor attention (constants above). GPT-2:
    LayerNorm, learned positions, GELU MLP; every other catalog family: RMSNorm, rotary embeddings, a gated
    MLP (DeepSeek-V2's partial rotary is counted on its whole query and key width)."""
    gpt2 = model.model_type == "gpt2"
    inter = model.intermediate_size * max(1, model.num_experts_per_tok)
    h = model.hidden_size
    norm = NORM_BYTES_PER_HIDDEN["layernorm" if gpt2 else "rmsnorm"]
    qk = 0 if gpt2 else (model.num_heads + model.num_kv_heads) * model.head_dim
    fwd = (RESIDUAL_BYTES_PER_HIDDEN[0] + 2 * norm[0]) * h + ROPE_BYTES_PER_QK[0] * qk
    fwd += ELEMENTWISE_FWD_BYTES_PER_INTER[not gpt2] * inter
    bwd = (RESIDUAL_BYTES_PER_HIDDEN[1] + 2 * norm[1]) * h + ROPE_BYTES_PER_QK[1] * qk
    bwd += ELEMENTWISE_BWD_BYTES_PER_INTER[not gpt2] * inter
    passes = 2 if train.grad_checkpointing else 1
    per_layer = fwd * passes + bwd
    if train.attn_impl is AttnImpl.EAGER:
        per_layer += EAGER_SCORE_BYTES * model.num_heads * train.seq_len
    return model.num_layers * per_layer + LOSS_BYTES_PER_LOGIT * model.vocab_size


def _exposed_communication_s(train: TrainSpec, comm_s: float, accum: float, gpu_s: float, bwd_share: float,
                             num_layers: int) -> float:
    """What compute does not hide. ZeRO-3 (DeepSpeed with overlap_comm, which planner emits for stage 3;
    FSDP likewise) prefetches the next layer's all-gather and reduce-scatters behind the next layer's
    backward: each micro-batch exposes whatever exceeds its compute, and at least one layer's share (the first
    gather, the last reduce-scatter). DDP all-reduces gradient buckets during the backward of the last
    micro-batch (Li et al. 2020, PyTorch Distributed, VLDB): the excess over that backward, at least one
    layer's share. ZeRO-1/2 as planner emits them (overlap_comm false) run their collectives after
    backward: all exposed."""
    if comm_s <= 0:
        return 0.0
    layers = max(num_layers, 1)
    if train.zero_stage == 3 and train.offload is Offload.NONE:
        comm_mb, gpu_mb = comm_s / accum, gpu_s / accum
        return accum * max(comm_mb / layers, comm_mb - gpu_mb)
    if train.zero_stage == 0:
        bwd_last = gpu_s / accum * bwd_share
        return max(comm_s / layers, comm_s - bwd_last)
    return comm_s


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
    tokens = accum * train.micro_batch * train.seq_len
    fpt = flops_per_token(model, train, counts, split)
    peak = cluster.gpu.dense_flops(train.precision.compute_dtype)
    if peak <= 0:
        raise PlannerError(f"GPU {cluster.gpu.name!r} has no dense FLOP/s figure for {train.precision.value}.")
    bw = cluster.gpu.memory_bandwidth_bytes_per_s or 1
    attention_s = elementwise_s = optimizer_s = 0.0
    if mfu is not None:
        compute_s = tokens * fpt.total / (peak * mfu)
    else:
        eff = kernel_efficiency(cluster.gpu.name)
        passes = 1 + (1 if train.grad_checkpointing else 0)
        attn_fwd = 4.0 * model.num_layers * train.seq_len * model.num_heads * model.head_dim
        attn_counted = attn_fwd * (3 + passes - 1)  # what flops_per_token counts: fwd, 2 x bwd, recompute
        compute_s = tokens * (fpt.total - attn_counted) / (peak * matmul_efficiency(cluster.gpu.name,
                                                                                    model.hidden_size))
        if train.attn_impl is AttnImpl.EAGER:
            # The full score matrix (masked, not skipped) as batched GEMMs at the matmul efficiency.
            attention_s = tokens * attn_counted / (peak * eff.matmul)
        else:
            # Causal fused kernels skip the masked half; FlashAttention's backward is 2.5 x its forward.
            attention_s = tokens * (attn_fwd / 2) * (passes + 2.5) / (peak * eff.attention)
        elementwise_s = tokens * _elementwise_bytes_per_token(model, train) / bw
        if train.offload is Offload.NONE:
            local = split.num_trainable / n if train.zero_stage >= 1 else split.num_trainable
            optimizer_s = local * OPTIMIZER_BYTES_PER_PARAM.get(train.optimizer.value, 28) / bw
    dequant_s = 0.0
    if train.method is Method.QLORA and split.num_quantized:
        passes = 3 if train.grad_checkpointing else 2  # forward, backward (+ recomputed forward)
        dequant_s = accum * passes * split.num_quantized * DEQUANT_BYTES_PER_PARAM / bw
    comm_b = _communication_bytes(train, split, n, accum)
    comm_s = comm_b / collective_bytes_per_s(cluster) if comm_b else 0.0
    gpu_s = compute_s + attention_s + elementwise_s + dequant_s
    bwd_share = (fpt.backward + fpt.recompute) / fpt.total if fpt.total else 0.0
    exposed_s = _exposed_communication_s(train, comm_s, accum, gpu_s, bwd_share, model.num_layers)
    host_b = _host_transfer_bytes(train, split, n, accum)
    host_s = host_b / (cluster.gpu.host_bytes_per_s * HOST_TRANSFER_EFFICIENCY) if host_b else 0.0
    cpu_s = 0.0
    if train.offload is not Offload.NONE:
        # The node's CPUs update the partitions of all its ranks.
        params_per_node = split.num_trainable / n * cluster.num_gpus_per_node
        cpu_s = params_per_node / CPU_ADAM_PARAMS_PER_S_PER_NODE
    total_s = gpu_s + optimizer_s + exposed_s + host_s + cpu_s
    hfu = tokens * fpt.total / (peak * total_s) if total_s > 0 else 0.0
    return StepTime(
        compute_s=compute_s,
        dequant_s=dequant_s,
        communication_s=comm_s,
        offload_transfer_s=host_s,
        cpu_optimizer_s=cpu_s,
        tokens_per_rank=tokens,
        communication_bytes=comm_b,
        host_transfer_bytes=host_b,
        attention_s=attention_s,
        elementwise_s=elementwise_s,
        optimizer_s=optimizer_s,
        exposed_communication_s=exposed_s,
        hardware_flops_utilisation=hfu,
        modelled=mfu is None,
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
