"""Bytes one training step moves, and how much of its communication time the step cannot hide.

Activation traffic through GPU memory outside matmuls and attention (norms, activations, residuals, rotary
embeddings, the loss), the optimizer step's and QLoRA dequantization's bytes per parameter, collectives over
the interconnect (ring algorithms, ZeRO stage by stage) and the part compute does not hide, host-device copies
under offload; with the constants each count rests on and their sources. ``planner.estimate.throughput``
divides them by the GPU's bandwidths. Never imports torch.
"""

from __future__ import annotations

from planner.estimate import fsdp2_traffic
from planner.estimate.count.params import ParamSplit
from planner.estimate.selective import layer_share
from planner.specs import AttnImpl, Cluster, Method, ModelSpec, Offload, PeftDtype, TrainSpec
from planner.units import nbytes

# Collectives reach about 80% of the link's unidirectional peak: nccl-tests report all-reduce bus
# bandwidth of roughly 360-480 GB/s on 8 x H100 NVLink 4 (450 GB/s per direction) and 40-45 GB/s per
# 400 Gb/s InfiniBand NIC (50 GB/s), so ~360 GB/s over a node's eight. A named assumption, not a
# measurement of the user's fabric.
COLLECTIVE_EFFICIENCY = 0.8

# Pinned host-device copies reach about 80% of PCIe peak (e.g. ~25 GB/s of 32 GB/s on PCIe 4 x16 in
# CUDA's bandwidthTest); DeepSpeed offload uses pinned buffers.
HOST_TRANSFER_EFFICIENCY = 0.8

# QLoRA dequantizes each 4-bit weight to the compute dtype before every matmul (bitsandbytes
# functional.dequantize_4bit): it reads 4 bits plus the block constants and writes 16 bits, ~2.6 bytes of
# memory traffic per quantized weight per pass, bound by GPU memory bandwidth.
DEQUANT_BYTES_PER_PARAM = 2.6

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


def _gradient_bytes(train: TrainSpec, split: ParamSplit) -> float:
    compute = train.precision.compute_dtype
    # adapters as peft keeps them (--lora-dtype); DeepSpeed's cast of fp32 adapters to 16 bits is not counted here
    adapters = compute if train.method is Method.FULL or train.lora_dtype is PeftDtype.BIT16 else "fp32"
    return nbytes(split.num_trainable - split.num_adapter, compute) + nbytes(split.num_adapter, adapters)


def communication_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """Bytes one rank sends (= receives) per optimizer step, ring algorithms ((N-1)/N of the buffer per
    reduce-scatter or all-gather; an all-reduce is both). ZeRO paper (Rajbhandari et al. 2020, §7):
    data parallelism and stages 1-2 move 2 x the 16-bit parameters per step, stage 3 3 x per micro-batch
    (all-gather in forward, all-gather in backward, reduce-scatter of gradients)."""
    if train.uses_fsdp2:  # all-gathers and reduce-scatters of fully_shard's groups
        return fsdp2_traffic.communication_bytes(train, split, num_ranks, accum)
    if num_ranks == 1:
        return 0.0
    ring = (num_ranks - 1) / num_ranks
    compute = train.precision.compute_dtype
    adapters = compute if train.method is Method.FULL or train.lora_dtype is PeftDtype.BIT16 else "fp32"
    grad_b = _gradient_bytes(train, split)
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
    full_param_b = nbytes(split.num_params, compute) + nbytes(split.num_adapter, adapters)
    return accum * ring * (2 * full_param_b + grad_b)


def reduction_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """The gradient-reduction part of ``communication_bytes`` (the rest gathers parameters): what DeepSpeed's
    ``overlap_comm`` moves to a side stream. ZeRO-1 reduces once, at the accumulation boundary; ZeRO-2 and
    ZeRO-3 every micro-batch (stage_1_and_2.py ``reduce_ready_partitions_and_remove_grads``; stage3.py
    ``reduce_independent_p_g_buckets_and_remove_grads``)."""
    if train.uses_fsdp2:
        return fsdp2_traffic.reduction_bytes(train, split, num_ranks, accum)
    if num_ranks == 1:
        return 0.0
    ring = (num_ranks - 1) / num_ranks
    reductions = 1 if train.zero_stage in (0, 1) else accum
    return reductions * ring * _gradient_bytes(train, split)


def host_transfer_bytes(train: TrainSpec, split: ParamSplit, num_ranks: int, accum: float) -> float:
    """ZeRO-Offload (Ren et al. 2021): 16-bit gradients of the rank's partition go to the host (every
    micro-batch at stages 2-3, which cannot keep full gradients; once at stage 1) and updated 16-bit
    parameters come back once per step. ZeRO-Infinity parameter offload (Rajbhandari et al. 2021) also
    copies the rank's 16-bit parameter partition to the GPU for forward and for backward."""
    if train.uses_fsdp2:  # CPUOffloadPolicy's copies
        return fsdp2_traffic.host_transfer_bytes(train, split, num_ranks, accum)
    if train.offload is Offload.NONE:
        return 0.0
    compute = train.precision.compute_dtype
    part_grads = nbytes(split.num_trainable, compute) / num_ranks
    grad_copies = accum if train.zero_stage >= 2 else 1
    total = grad_copies * part_grads + part_grads  # gradients out, updated parameters in
    if train.offload is Offload.OPTIMIZER_PARAMS:
        total += accum * 2 * nbytes(split.num_params, compute) / num_ranks
    return total


def elementwise_bytes_per_token(model: ModelSpec, train: TrainSpec) -> float:
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
    # the recomputed layers run their elementwise kernels again (every layer under full or op checkpointing)
    passes = 1 + layer_share(train, model.num_layers)
    per_layer = fwd * passes + bwd
    if train.attn_impl is AttnImpl.EAGER:
        per_layer += EAGER_SCORE_BYTES * model.num_heads * train.seq_len
    return model.num_layers * per_layer + LOSS_BYTES_PER_LOGIT * model.vocab_size


def exposed_communication_s(train: TrainSpec, comm_s: float, accum: float, gpu_s: float, bwd_share: float,
                             num_layers: int, reduce_s: float = 0.0) -> float:
    """What compute does not hide, as each engine overlaps (``reduce_s``: the gradient-reduction part of
    ``comm_s``, ``reduction_bytes``; ``gpu_s``: the step's GPU compute; ``bwd_share``: backward's part of it).

    - DDP all-reduces gradient buckets during the backward of the last micro-batch (Li et al. 2020, PyTorch
      Distributed, VLDB): the excess over that backward, at least one layer's share.
    - DeepSpeed ZeRO-3 all-gathers on its own stream whatever ``overlap_comm`` says
      (parameter_offload.py ``__allgather_stream``; partitioned_param_coordinator.py prefetches the next
      modules), and with ``overlap_comm`` (its default at stage 3) reduce-scatters on
      ``reduce_and_partition_stream`` too (stage3.py), behind the next layer's backward: each micro-batch
      exposes whatever exceeds its compute, and at least one layer's share (the first gather, the last
      reduce-scatter). Without ``overlap_comm`` that stream is the default stream: the reduce-scatters add.
    - DeepSpeed ZeRO-1/2 with ``overlap_comm`` reduce each filled IPG bucket on ``reduction_stream`` while
      backward goes on (stage_1_and_2.py ``average_tensor``; ZeRO-2 in every micro-batch's backward, ZeRO-1 in
      the boundary's): the excess over that backward, at least one layer's share; the all-gather of the
      updated parameters after the optimizer step (``all_gather_dp_groups``) has nothing to hide behind.
      Without it (its default at stages 1-2, and planner's bundle) the reductions run on the compute stream:
      all exposed.
    - With any offload every collective is counted exposed (the step waits on host copies too).
    - FSDP2: ``fsdp2_traffic.exposed_communication_s``.
    """
    if comm_s <= 0:
        return 0.0
    if train.uses_fsdp2:  # all-gather and reduce-scatter streams with prefetch (fsdp2_traffic.py)
        return fsdp2_traffic.exposed_communication_s(comm_s, accum, gpu_s, num_layers)
    layers = max(num_layers, 1)
    stage = train.zero_stage
    if not train.uses_deepspeed:
        bwd_last = gpu_s / accum * bwd_share
        return max(comm_s / layers, comm_s - bwd_last)
    if train.offload is not Offload.NONE:
        return comm_s
    overlaps = train.parallelism.zero_config.overlaps(stage)
    if stage == 3:
        if overlaps:
            comm_mb, gpu_mb = comm_s / accum, gpu_s / accum
            return accum * max(comm_mb / layers, comm_mb - gpu_mb)
        gather_mb, gpu_mb = (comm_s - reduce_s) / accum, gpu_s / accum
        return accum * max(gather_mb / layers, gather_mb - gpu_mb) + reduce_s
    if not overlaps:
        return comm_s
    reductions = 1 if stage == 1 else accum  # stage 1 reduces in the boundary's backward only
    red_each, bwd_each = reduce_s / reductions, gpu_s / accum * bwd_share
    return reductions * max(red_each / layers, red_each - bwd_each) + (comm_s - reduce_s)
