"""estimate(): specs in, Estimate out. Composes params, states, sharding, the simulated step and the phases."""

from __future__ import annotations

import math
from dataclasses import replace

from planner.errors import PlannerError
from planner.estimate import ds_stage0, grpo, offload_pool, optim_rules, overhead, posttrain, ppo, qlora_shard
from planner.estimate.compile_note import compile_notes
from planner.estimate.count.params import count_params, largest_trainable_tensor, split_params
from planner.estimate.count.zero_partition import (
    FlatOrder,
    PartitionSpec,
    RankPartition,
    buffer_segment,
    buffer_threshold,
    partitions_to_evaluate,
    trainable_blocks,
    trainable_numels,
    zero3_persistence_threshold,
    zero3_persistent_numels,
    zero3_released_after_forward,
)
from planner.estimate.host_ram import host_ram_per_rank, with_activation_offload
from planner.estimate.peak import PHASES, phase_breakdowns
from planner.estimate.result import Estimate
from planner.estimate.sharding import (
    DS_SUB_GROUP_SIZE,
    fused_step_counter_bytes,
    shard_states,
    zero3_persistent,
    zero3_sub_groups,
)
from planner.estimate.states import unsharded_states
from planner.estimate.step import selective_layers
from planner.estimate.step.cpu_kernels import CpuKernels
from planner.estimate.step.loss_recipes import loss_notes
from planner.estimate.step.simulate import lora_adapter_paths, simulate_step
from planner.estimate.temporaries import Transients, reduce_bucket_elements, step_transients
from planner.estimate.zero3_epilogue import largest_gathered_module, zero3_epilogue
from planner.specs import Cluster, Loss, Method, ModelSpec, Offload, Optimizer, TrainSpec, validate_margin
from planner.units import dtype_bytes, fmt_gib

DEFAULT_MARGIN = 0.1
DEVICES = ("cuda", "cpu")

__all__ = ["DEFAULT_MARGIN", "PHASES", "check_combination", "estimate"]


def check_combination(model: ModelSpec, train: TrainSpec, cluster: Cluster, *, allow_longer: bool = False) -> None:
    """Refuse combinations planner cannot estimate honestly, with a reason."""
    if train.optimizer_in_backward and cluster.num_gpus > 1:
        raise PlannerError(
            "--optimizer-in-backward runs on one GPU: the step in each gradient's hook would come before DDP "
            "reduces it (torchtune's distributed recipes shard with FSDP2, which planner does not model); use --gpus 1."
        )
    if train.uses_fsdp2:  # HSDP's replicate degree divides the ranks (specs/fsdp.py)
        train.parallelism.fsdp_config.shard_size(cluster.num_gpus)
    if train.uses_deepspeed and cluster.num_gpus == 1 and train.offload is Offload.NONE:
        # Valid in DeepSpeed (nothing to shard across), kept: ZeRO with one rank equals stage 0 plus buffers.
        pass
    if train.method is Method.QLORA and not cluster.gpu.supports_bf16 and train.precision.compute_dtype == "bf16":
        raise PlannerError(
            f"GPU {cluster.gpu.name!r} has no bf16 support; use --precision fp16-mixed for QLoRA on it."
        )
    if train.seq_len > model.max_position_embeddings and not allow_longer:
        raise PlannerError(
            f"sequence length {train.seq_len} is longer than model {model.name!r}'s position limit "
            f"(max_position_embeddings {model.max_position_embeddings}); use at most "
            f"{model.max_position_embeddings} or pass --allow-longer."
        )


def estimate(
    model: ModelSpec,
    train: TrainSpec,
    cluster: Cluster,
    *,
    margin: float = DEFAULT_MARGIN,
    device: str = "cuda",
    allow_longer: bool = False,
    rank: int | None = None,
    cpu: CpuKernels | None = None,
) -> Estimate:
    """Per-GPU memory of one training configuration at its peak moment.

    ``device="cpu"`` leaves out GPU-only terms (reserved = device = allocated) and follows CPU kernels (the
    validation suite's profiles). One configuration, never a search (the fit limits: planner/plan/fits.py).
    Ranks differ only under ZeRO 1/2, whose gradient
    buffers hold whole tensors across partition edges (zero_partition.py): ``rank`` picks one, by default
    the rank with the highest peak (the one that runs out of memory first). ``cpu``: with ``device="cpu"``, the
    CPU kind of the run being estimated (cpu_kernels.py): on oneDNN, 16-bit matmuls allocate workspaces.
    """
    validate_margin(margin)
    if device not in DEVICES:
        raise PlannerError(f"device must be one of {', '.join(DEVICES)}, got {device!r}.")
    check_combination(model, train, cluster, allow_longer=allow_longer)
    if train.uses_fsdp2:  # fully_shard's own division and buffers (fsdp2.py, fsdp2_step.py)
        from planner.estimate.fsdp2_step import estimate_fsdp2

        return estimate_fsdp2(model, train, cluster, margin=margin, device=device, rank=rank, cpu=cpu)
    counts = count_params(model)
    split = split_params(counts, train)
    states = unsharded_states(counts, split, train, num_layers=model.num_layers)
    # 8-bit and paged AdamW, Adafactor: per-tensor states and step (optim_rules.py; no DeepSpeed, specs/train.py)
    per_tensor = (optim_rules.optimizer_memory(FlatOrder.of(counts, train, model.num_layers), train, device)
                  if optim_rules.applies(train) else None)
    num_persistent, persistent_bytes = zero3_persistent(counts, train, model.num_layers, model.hidden_size)
    num_released = zero3_released_after_forward(counts, train, zero3_persistence_threshold(train, model.hidden_size))
    sub_groups = _sub_groups(model, train, counts, split.num_trainable, cluster.num_gpus)
    # ZeRO-3 offload on the CPU accelerator: host and device are one pool, both sides counted (offload_pool.py)
    pooled = offload_pool.applies(train, device)
    sharding_train = offload_pool.pool_train(train) if pooled else train
    # QLoRA under ZeRO-3: the 4-bit weights partitioned in their storage dtype, quant_state whole (qlora_shard.py)
    quantized = qlora_shard.zero3(counts, train, cluster.num_gpus, model.hidden_size) if qlora_shard.applies(train) else None
    sharded = shard_states(qlora_shard.without_quantized(states, counts, train) if quantized else states,
                           sharding_train, cluster.num_gpus,
                           largest_gathered_module(counts, zero3_persistence_threshold(train, model.hidden_size))
                           if train.zero_stage == 3 else counts.largest_module, persistent_bytes, sub_groups)
    if quantized:
        sharded = replace(sharded, params_bytes=sharded.params_bytes + quantized.rank_bytes,
                          gathered_bytes=quantized.largest_module_bytes)
    if pooled:  # every sub-group's fp32 gradient buffer is held through the step, not made at it
        sharded = replace(sharded, step_grad_fp32_bytes=0)
    counters = fused_step_counter_bytes(train, _num_trainable_tensors(model, train, counts),
                                        math.ceil(split.num_trainable / cluster.num_gpus), sub_groups)
    if counters:
        sharded = replace(sharded, optimizer_states_bytes=sharded.optimizer_states_bytes + counters)
    # paged optimizers: CUDA unified memory (bitsandbytes functional.py get_paged, cudaMallocManaged) is outside
    # PyTorch's caching allocator, so not in the allocated and reserved figures; it is in the device figure
    # (NVML) while resident, which is what fits checks (Estimate.paged_optimizer_bytes)
    # --task dpo with a separate reference model: its frozen weights on every rank (posttrain.py)
    ref_bytes = posttrain.reference_params_bytes(
        split, train, cluster.num_gpus,
        zero3_persistent_numels(counts, train, model.num_layers, zero3_persistence_threshold(train, model.hidden_size))[0]
        if train.zero_stage == 3 else 0)
    policy_params_bytes = sharded.params_bytes
    if ref_bytes:
        sharded = replace(sharded, params_bytes=sharded.params_bytes + ref_bytes)
    paged = per_tensor.paged_bytes if per_tensor else 0
    if paged:
        sharded = replace(sharded, optimizer_states_bytes=sharded.optimizer_states_bytes - paged)

    adapters = lora_adapter_paths(model, train) if train.method is not Method.FULL else ()
    zero2 = train.zero_stage == 2 and train.offload is Offload.NONE
    hold = reduce_bucket_elements(train, model.hidden_size) if zero2 else 0
    largest_tensor = largest_trainable_tensor(counts, train)
    if largest_tensor <= hold:
        # the tape holds only a gradient larger than the bucket (tape.py _accumulate_grad, _param_grad_arrives):
        # with no trainable tensor that large (LoRA adapters) the step is the one without the rule, and shares
        # its simulation with ZeRO-2's offload row (tests/test_step_sharing.py)
        hold = 0
    step = simulate_step(model, train, device=device, keep_grads=train.zero_stage < 2, adapters=adapters,
                         hold_grads_over=hold, cpu=cpu)
    # the 16-bit trainable parameters with fp32 masters (not those the optimizer steps as they are: states.py)
    num_mastered = states.num_16bit_trainable - states.num_stepped_16bit

    def transients_for(partition: RankPartition | None) -> Transients:
        made = step_transients(
            sharding_train,
            num_trainable=split.num_trainable,
            num_16bit_trainable=num_mastered,
            num_stepped_16bit=states.num_stepped_16bit,
            num_ranks=cluster.num_gpus,
            grads_bytes=states.grads_bytes,
            hidden_size=model.hidden_size,
            largest_trainable=counts.largest_module,
            largest_trainable_tensor=largest_tensor,
            # ZeRO-3 gathers only the partitioned ones, and not those it drops after forward for good; adapters
            # and modules_to_save copies are DeepSpeed parameters too (num_persistent counts theirs), gathered
            # like the base's when over the persistence threshold (LoRA B of a wide MLP projection)
            num_params=split.num_params + split.num_adapter + split.num_saved - num_persistent - num_released
            - (split.num_quantized - quantized.num_gathered if quantized else 0),
            partition=partition,
            optimizer_step_bytes=per_tensor.step_bytes if per_tensor else None,
            device=device,
        )
        if ds_stage0.applies(train):  # DeepSpeed stage 0's flat all-reduce buckets (ds_stage0.py)
            made = replace(made, allreduce_flat_bytes=ds_stage0.allreduce_flat_bytes(
                trainable_numels(counts, train, model.num_layers), dtype_bytes(train.precision.compute_dtype)))
        if not pooled:
            return made
        held = offload_pool.subgroup_grads_bytes(math.ceil(split.num_trainable / cluster.num_gpus), sub_groups)
        return replace(made, persistent_bytes=made.persistent_bytes + held)

    host = host_ram_per_rank(
        states, train, cluster.num_gpus, largest_param_numel=largest_tensor,
        params_partition_bytes=math.ceil(states.params_bytes / cluster.num_gpus), device=device,
        accumulation_numels=_accumulation_numels(model, train, counts), sub_groups=sub_groups,
    )
    host = with_activation_offload(host, step.offloaded_bytes, step.offloaded_pinned_bytes, device)
    cublas = overhead.allocated_overhead_bytes(device)
    epilogue = zero3_epilogue(
        train, counts, trainable_numels(counts, train, model.num_layers) if train.zero_stage == 3 else (),
        num_ranks=cluster.num_gpus, bucket_elements=reduce_bucket_elements(train, model.hidden_size),
        threshold=zero3_persistence_threshold(train, model.hidden_size),
        grad_bytes=2 if train.precision.compute_dtype in ("bf16", "fp16") else 4, device=device)
    # the rank with the highest peak (or the one asked for); ranks differ only in their ZeRO 1/2 partition
    partitions, ranks_differ = _rank_partitions(model, train, cluster.num_gpus, counts, split.num_trainable, rank)
    shown: RankPartition | None = None
    transients, pm = None, None
    for candidate in partitions:
        cand_transients = transients_for(candidate)
        if rank is not None and zero2 and cand_transients.zero_step is not None:
            # the rank asked for: its ZeRO-2 buffer from the backward segment where DeepSpeed makes it (the
            # default, the highest rank's peak, keeps the earliest: no rank makes it before the first gradient)
            spec = PartitionSpec(FlatOrder.of(counts, train, model.num_layers), cluster.num_gpus,
                                 reduce_bucket_elements(train, model.hidden_size))
            cand_transients = replace(cand_transients, zero_step=replace(
                cand_transients.zero_step, buffer_segment=buffer_segment(spec, rank),
                buffer_threshold=buffer_threshold(spec, rank)))
        cand_pm = phase_breakdowns(train, sharded, step, cand_transients, overhead_bytes=cublas, epilogue=epilogue)
        if pm is None or cand_pm.peak.total_bytes > pm.peak.total_bytes:
            shown, transients, pm = candidate, cand_transients, cand_pm
    if train.task.grpo is not None:  # the generation before the step (estimate/grpo.py)
        train.task.grpo.check_run(train.micro_batch * cluster.num_gpus * train.grad_accum)
        gen = grpo.generation_phase(model, train, pm.phases["forward"])
        if gen is not None:
            phases = {**pm.phases, "generation": gen}
            pm = replace(pm, phases=phases, peak_phase=max(phases, key=lambda p: (phases[p].total_bytes, p)))
    ppo_side = None
    if train.task.ppo is not None:  # the value and reward models, the rollout and its phases (estimate/ppo.py)
        train.task.ppo.check_run(train.micro_batch, train.grad_accum)
        value_step = simulate_step(model, ppo.value_train(train), device=device, cpu=cpu)
        ppo_side = ppo.side(model, train, counts, value_step.per_layer_saved_bytes)
        pm = ppo.phases(pm, train, ppo_side)
    peak = pm.peak
    reserved = overhead.reserved_bytes(peak.total_bytes, device)
    device_total = overhead.device_bytes(reserved, device, cluster.num_gpus) + paged
    vllm_share, vllm_held = grpo.vllm_bytes(train, cluster.gpu.capacity_bytes)
    if vllm_share:  # vLLM colocated: its share beside the trainer's tensors, while generating (and training)
        states = pm.phases["forward"]
        idle = states.params_bytes + states.optimizer_states_bytes + states.overhead_bytes
        idle_device = overhead.device_bytes(overhead.reserved_bytes(idle, device), device, cluster.num_gpus)
        device_total = max(device_total + vllm_held, idle_device + paged + vllm_share)

    notes = list(sharded.notes) + list(step.notes) + list(transients.notes)
    if quantized:
        notes.append(qlora_shard.sharded_note(train))
    if device == "cpu" and cpu is not None:
        notes.append(f"estimated for {cpu.describe()}.")
        if step.unknown_matmuls:
            notes.append(f"oneDNN's workspace of {len(step.unknown_matmuls)} matmul call(s) is not known for this "
                         "CPU kind and is counted as 0 (planner.profile.cpu_kind measures it).")
    if train.seq_len > model.max_position_embeddings:
        notes.append(
            f"sequence length {train.seq_len} exceeds the model's position limit {model.max_position_embeddings} "
            "(--allow-longer): memory is estimated, quality is not."
        )
    num_logits = step.logits_bytes // dtype_bytes(train.precision.matmul_dtype)
    notes.extend(loss_notes(train))
    models = posttrain.model_rows(train, policy_params_bytes, ref_bytes, cluster.num_gpus)
    if ppo_side is not None:
        models = ppo.model_rows(train, policy_params_bytes, ref_bytes, ppo_side, cluster.num_gpus)
        notes.extend(ppo.notes(model, train, ppo_side, pm))
    notes.extend(posttrain.notes(train, models, step.scoring_peak_bytes))
    notes.extend(grpo.notes(model, train, cluster.gpu.capacity_bytes, pm.phases.get("generation")))
    # fp32 log-probabilities + their gradient + log_softmax's backward result (logits.py)
    if train.loss.kind is Loss.STANDARD and pm.peak_phase == "backward" and 12 * num_logits > peak.total_bytes // 3:
        notes.append("the peak is the loss backward: fp32 log-probabilities and two fp32 gradients of "
                     "[tokens, vocabulary] (transformers' ForCausalLMLoss upcasts the logits).")
    if paged:
        notes.append(paged_note(paged, per_tensor.largest_paged_bytes, device_total))
    if train.activation_offload:
        notes.append(activation_offload_note(step.offloaded_bytes, device))
    notes.extend(compile_notes(train.compile, train.grad_checkpointing))
    notes.extend(selective_layers.notes(train))
    differ = shown is not None and ranks_differ
    if differ and shown.num_buffer > shown.num_partition:
        notes.append(
            f"DeepSpeed ZeRO-{train.zero_stage}: the figures are rank {shown.rank}'s, the highest; its gradient "
            f"buffer holds whole tensors across its partition's edges ({shown.num_buffer:,} elements, an even "
            f"share is {shown.num_partition:,})."
        )
    result = Estimate(
        model=model,
        train=train,
        cluster=cluster,
        num_params=split.num_params,
        num_trainable_params=split.num_trainable,
        per_gpu=peak,
        peak_phase=pm.peak_phase,
        reserved_bytes=reserved,
        device_bytes=device_total,
        cpu_bytes_per_node=host.total_bytes * cluster.num_gpus_per_node,
        cpu_pinned_bytes_per_node=host.pinned_bytes * cluster.num_gpus_per_node,
        capacity_bytes=cluster.gpu.capacity_bytes,
        margin=margin,
        phases=pm.phases,
        notes=tuple(notes),
        rank=shown.rank if differ else rank,
        unknown_matmuls=step.unknown_matmuls,
        paged_optimizer_bytes=paged,
        paged_largest_tensor_bytes=per_tensor.largest_paged_bytes if per_tensor else 0,
        models=models,
        scoring_peak_bytes=step.scoring_peak_bytes,
    )
    if result.cpu_bytes_per_node:
        result = replace(result, notes=result.notes + _host_notes(result, host))
    if device == "cpu" and train.uses_deepspeed and train.zero_stage in (1, 2) and train.offload is not Offload.NONE:
        result = replace(result, notes=result.notes + (zero12_cpu_offload_note(train.zero_stage, host.total_bytes),))
    if train.uses_deepspeed and train.zero_stage in (1, 2) and train.offload is not Offload.NONE and largest_tensor:
        # stage_1_and_2.py __init__ (cpu_offload): temp_grad_buffer_for_gpu_offload, torch.zeros(largest_param_numel,
        # device=current_device_name(), dtype=self.dtype), kept for the run; not in the device figure yet
        buffer_bytes = largest_tensor * dtype_bytes(train.precision.compute_dtype)
        result = replace(result, notes=result.notes + (
            "not modelled: DeepSpeed ZeRO-1/2 offload keeps temp_grad_buffer_for_gpu_offload on the device "
            f"(stage_1_and_2.py: the largest trainable parameter in the training dtype, {fmt_gib(buffer_bytes)}, "
            f"{buffer_bytes:,} bytes), which this figure does not count.",))
    return result


def zero12_cpu_offload_note(stage: int, host_bytes: int) -> str:
    """ZeRO-1/2 offload estimated for a CPU run: the host side is not added to the device figure (not modelled).

    DeepSpeed's CPU accelerator (deepspeed/accelerator/cpu_accelerator.py) puts ``offload_optimizer``'s states in
    the same memory as the "device", so a CPU profile sees both sides together; offload_pool.py adds them for
    ZeRO-3 only. For ZeRO-1/2 the host side (host_ram.py, from stage_1_and_2.py ``_setup_for_real_optimizer``,
    ``initialize_optimizer_states``, ``_update_model_bit16_weights``/``step``) stays out of the per-rank figure, and
    when its states are alive relative to the device's peak is not modelled: the estimate says so.
    """
    return (f"not modelled: DeepSpeed ZeRO-{stage} with offload_optimizer on the CPU accelerator (cpu_accelerator.py) "
            "keeps its offloaded states in the same memory as the device, and this per-rank figure counts only the "
            f"device side; the host side ({fmt_gib(host_bytes)}, {host_bytes:,} bytes per rank: the fp32 master partition and its "
            "persistent fp32 .grad, the 16-bit copy-back buffer param_buffer_of_bit16_for_cpu_offload_groups, "
            "temp_grad_buffer_for_cpu_offload, the optimizer's moments; stage_1_and_2.py) and the optimizer step's "
            "scratch on it are not added, so a CPU run peaks far above this figure (2-rank ZeRO-1 and ZeRO-2 CPU profiles: "
            "74-75% of the measured peak missing, and still 9-16% with the host side added); the GPU split follows "
            "DeepSpeed's source but is not validated.")


def paged_note(paged_bytes: int, largest_bytes: int, device_bytes: int) -> str:
    """What a paged optimizer's figures assume (optim_rules.py ``BNB_PAGED_MIN_NUMEL``)."""
    gib = 2**30
    spilled = device_bytes - paged_bytes + largest_bytes
    return (f"paged optimizer: {paged_bytes / gib:,.2f} GiB of its states are in CUDA unified memory "
            "(bitsandbytes get_paged, outside PyTorch's allocator: not in the allocated and reserved figures), "
            "counted as resident on the GPU in the device peak, which is what the fit check assumes; the driver "
            f"may spill them to host RAM, leaving a device peak of {spilled / gib:,.2f} GiB (the largest tensor's "
            "states come back for its update), at the cost of PCIe traffic at every step.")


def _num_trainable_tensors(model: ModelSpec, train: TrainSpec, counts) -> int:
    """Trainable tensors in ``model.parameters()`` (zero_partition.py ``trainable_numels``), counted only where a
    rule reads them (adamw-fused without DeepSpeed: one step counter each)."""
    if train.optimizer is not Optimizer.ADAMW_FUSED or train.zero_stage != 0:
        return 0
    return sum(len(block) * reps for block, reps in trainable_blocks(FlatOrder.of(counts, train, model.num_layers)))


def _sub_groups(model: ModelSpec, train: TrainSpec, counts, num_trainable: int, num_ranks: int):
    """ZeRO-3's sub-groups when a --deepspeed-config's sub_group_size splits the rank's partition (None: one)."""
    if train.zero_stage != 3 or num_trainable <= 0:
        return None
    if train.parallelism.zero_config.sub_group_size == DS_SUB_GROUP_SIZE:
        return None  # DeepSpeed's default: sharding.py's one-group rule (min(partition, sub_group_size))
    return zero3_sub_groups(trainable_numels(counts, train, model.num_layers), num_ranks,
                            train.parallelism.zero_config.sub_group_size)


def _accumulation_numels(model: ModelSpec, train: TrainSpec, counts) -> tuple[int, ...]:
    """ZeRO-1/2 offload with gradient accumulation pins one buffer per trainable tensor (host_ram.py)."""
    if train.zero_stage not in (1, 2) or train.offload is Offload.NONE or train.grad_accum <= 1:
        return ()
    return trainable_numels(counts, train, model.num_layers)  # cached in zero_partition


def activation_offload_note(offloaded_bytes: int, device: str) -> str:
    where = ("in pinned host RAM per rank (counted in host RAM per node)" if device == "cuda" else
             "as CPU copies, counted in the activations (on CPU the host is the device)")
    return (f"activation offloading (torch.autograd.graph.save_on_cpu): {fmt_gib(offloaded_bytes)} of saved "
            f"tensors {where}, every tensor each time a node saves it, parameters included (torchtune's "
            "OffloadActivations keeps parameters and tensors under 1 KiB on the GPU); in backward each node gets "
            "a device copy of what it saved while it runs.")


def _host_notes(est: Estimate, host) -> tuple[str, ...]:
    """What the host RAM figure holds, and whether it was checked (numbers: the row's columns)."""
    notes = []
    if host.pinned_bytes:
        held = ("DeepSpeed's offloaded optimizer states and pinned buffers" if est.train.offload is not Offload.NONE
                and est.train.uses_deepspeed else "")
        if est.train.activation_offload:
            held += (" and " if held else "") + "the offloaded activations"
        notes.append(f"host RAM per node = its ranks x ({held}); PyTorch's pinned allocator rounds each pinned buffer up to a power of two "
                     "(cpu_pinned_bytes_per_node in --json).")
    if est.train.offload is not Offload.NONE and est.train.uses_deepspeed and host.pinned_bytes:
        # offload_pool.py: on the CPU accelerator both sides are one pool, so CPU profiles check only their sum
        notes.append("DeepSpeed offload's split between GPU and host RAM follows DeepSpeed 0.19's source (stage3.py, "
                     "stage_1_and_2.py); planner's CPU profiles check the two sides together, not the split.")
    if est.cluster.host_memory_bytes_per_node is None:
        notes.append("host RAM per node was not checked against the offload's need; pass --host-ram GIB to check it.")
    return tuple(notes)


def _rank_partitions(model: ModelSpec, train: TrainSpec, num_ranks: int, counts, num_trainable: int,
                     rank: int | None) -> tuple[tuple[RankPartition | None, ...], bool]:
    """The ZeRO 1/2 partitions worth evaluating (those that can hold the highest peak, lowest rank first, or
    ``rank``'s) and whether the ranks differ; computed per tensor boundary, never per rank (zero_partition.py)."""
    if rank is not None and not 0 <= rank < num_ranks:
        raise PlannerError(f"rank must be between 0 and {num_ranks - 1} (the number of GPUs minus one), got {rank}.")
    if train.zero_stage not in (1, 2) or train.offload is not Offload.NONE or num_trainable <= 0:
        return (None,), False
    spec = PartitionSpec(FlatOrder.of(counts, train, model.num_layers), num_ranks,
                         reduce_bucket_elements(train, model.hidden_size))
    chosen = partitions_to_evaluate(spec, num_trainable, rank)
    return chosen.partitions, chosen.ranks_differ
