"""ZeRO-3 offload on the CPU accelerator (estimate/offload_pool.py): host and device are one pool, so a CPU
estimate counts both sides. Measured figures: the profiles of the two DS_OFFLOAD_CELLS (planner validate, rank 0,
steady-state peak in backward, both kernel paths): params 390,048, grads 389,088 bytes, the same with and without
offload_param."""

from __future__ import annotations

import math

from planner import catalog
from planner.estimate.core import estimate
from planner.specs import Cluster
from planner.validate.ds_offload_cells import DS_OFFLOAD_CELLS

MEASURED_PARAMS_BYTES = 390_048  # the 16-bit partition and the persistent norms
MEASURED_GRADS_BYTES = 389_088  # grad_partitions_flat_buffer: 194,544 bf16 elements


def _estimates(device: str):
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)
    return [estimate(c.model_spec(), c.train_spec(), cluster, device=device, rank=0) for c in DS_OFFLOAD_CELLS]


def test_cpu_estimate_counts_the_offloaded_states_where_the_profile_finds_them():
    opt, opt_params = _estimates("cpu")
    assert opt.per_gpu == opt_params.per_gpu  # one pool: offload_param moves nothing on the CPU accelerator
    assert opt.per_gpu.params_bytes == MEASURED_PARAMS_BYTES
    assert opt.per_gpu.grads_bytes == MEASURED_GRADS_BYTES


def test_the_pooled_host_side_is_the_host_ram_model():
    """What the CPU estimate puts back in the pool is what host_ram.py says the host holds (optimizer offload):
    the master and moments, the 16-bit gradient partition, every sub-group's fp32 gradient buffer."""
    (opt, _), (cuda_opt, _) = _estimates("cpu"), _estimates("cuda")
    n = math.ceil(opt.num_trainable_params / 2)
    host_per_rank = opt.cpu_bytes_per_node // 2
    assert host_per_rank == opt.per_gpu.optimizer_states_bytes + opt.per_gpu.grads_bytes + 4 * n
    assert cuda_opt.per_gpu.optimizer_states_bytes == 0 and cuda_opt.per_gpu.grads_bytes == 0


def test_parameter_offload_keeps_the_gathered_parameters_on_the_device():
    _, cuda_opt_params = _estimates("cuda")
    cuda_opt, _ = _estimates("cuda")
    moved = cuda_opt.per_gpu.params_bytes - cuda_opt_params.per_gpu.params_bytes
    assert moved > 0 and cuda_opt.per_gpu.temporaries_bytes == cuda_opt_params.per_gpu.temporaries_bytes


def test_zero12_offload_on_cpu_says_the_host_side_is_not_modelled():
    """ZeRO-1/2 offload is not pooled (offload_pool.applies is ZeRO-3 only): the CPU estimate must say that its
    host side is left out, with host_ram.py's bytes, never silently; ZeRO-3 (pooled) and GPU estimates do not."""
    from dataclasses import replace

    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)
    for zero in (1, 2):
        cell = replace(DS_OFFLOAD_CELLS[0], zero=zero)
        cpu = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cpu", rank=0)
        notes = [n for n in cpu.notes if "on the CPU accelerator" in n]
        assert len(notes) == 1 and f"ZeRO-{zero} " in notes[0]
        assert f"{cpu.cpu_bytes_per_node // 2:,} bytes per rank" in notes[0]
        cuda = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cuda", rank=0)
        assert not any("on the CPU accelerator" in n for n in cuda.notes)
    pooled = estimate(DS_OFFLOAD_CELLS[0].model_spec(), DS_OFFLOAD_CELLS[0].train_spec(), cluster, device="cpu", rank=0)
    assert not any("on the CPU accelerator" in n for n in pooled.notes)


def test_zero12_offload_names_the_device_buffer_it_does_not_count():
    """stage_1_and_2.py keeps temp_grad_buffer_for_gpu_offload (the largest trainable parameter, 16-bit) on the
    device under ZeRO-1/2 offload; until it is counted, every such estimate names it with its bytes."""
    from dataclasses import replace

    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)
    cell = replace(DS_OFFLOAD_CELLS[0], zero=2)
    est = estimate(cell.model_spec(), cell.train_spec(), cluster, device="cuda", rank=0)
    notes = [n for n in est.notes if "temp_grad_buffer_for_gpu_offload" in n]
    assert len(notes) == 1 and f"{2 * cell.vocab * cell.hidden:,} bytes" in notes[0]  # the embedding, bf16
