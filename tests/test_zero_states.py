"""Model-state arithmetic against the ZeRO paper and DeepSpeed's own estimators."""

from __future__ import annotations

import dataclasses

import pytest

from planner.estimate.count.params import LinearGroup, ParamCounts, ParamSplit
from planner.estimate.sharding import DS_SUB_GROUP_SIZE, shard_states
from planner.estimate.states import unsharded_states
from planner.specs import Method, Offload, Optimizer, Parallelism, Precision, TrainSpec

GB = 10**9
# ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054, Figure 1 arithmetic): 16 bytes per parameter with
# mixed-precision Adam; per-rank stage 1 4P+12P/N, stage 2 2P+14P/N, stage 3 16P/N.
PAPER_8B_ON_8 = {0: 128 * GB, 1: 44 * GB, 2: 30 * GB, 3: 16 * GB}
NUM_8B = 8 * GB


def _dense_counts(num_params: int) -> ParamCounts:
    # A single linear group holding every parameter: enough for state arithmetic.
    return ParamCounts(
        embedding=0,
        attention=0,
        mlp=num_params,
        norms=0,
        lm_head=0,
        other=0,
        tied=False,
        linears=(LinearGroup("proj", 1000, num_params // 1000, 1, False),),
        largest_module=num_params // 32,
    )


def _full_split(num_params: int) -> ParamSplit:
    return ParamSplit(
        num_params=num_params, num_trainable=num_params, num_adapter=0, num_quantized=0, num_16bit=num_params
    )


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_paper_8b_on_8_gpus(stage):
    counts = _dense_counts(NUM_8B)
    train = TrainSpec(parallelism=Parallelism.from_zero(stage))
    states = unsharded_states(counts, _full_split(NUM_8B), train)
    assert states.params_bytes + states.grads_bytes + states.optimizer_states_bytes == 16 * NUM_8B
    sharded = shard_states(states, train, 8, counts.largest_module)
    model_states = sharded.params_bytes + sharded.grads_bytes + sharded.optimizer_states_bytes
    assert model_states == PAPER_8B_ON_8[stage]


def test_pure_bf16_and_fp32_bytes_per_param():
    counts = _dense_counts(10**9)
    split = _full_split(10**9)
    # Pure bf16 AdamW: 2 weights + 2 grads + 2 + 2 moments, no master.
    pure = unsharded_states(counts, split, TrainSpec(precision=Precision.BF16))
    assert pure.params_bytes + pure.grads_bytes + pure.optimizer_states_bytes == 8 * 10**9
    # fp32 AdamW: 4 + 4 + 8 (DESIGN.md §3).
    fp32 = unsharded_states(counts, split, TrainSpec(precision=Precision.FP32))
    assert fp32.params_bytes + fp32.grads_bytes + fp32.optimizer_states_bytes == 16 * 10**9
    # SGD with momentum, mixed precision: 2 + 2 + 4 master + 4 momentum.
    sgd = unsharded_states(counts, split, TrainSpec(optimizer=Optimizer.SGD))
    assert sgd.optimizer_states_bytes == 8 * 10**9


def test_8bit_adam_state_is_about_two_bytes_per_param():
    counts = _dense_counts(10**9)
    s = unsharded_states(counts, _full_split(10**9), TrainSpec(optimizer=Optimizer.ADAMW_8BIT))
    moments = s.optimizer_states_bytes - s.master_bytes
    # 2 x (8 bits + 32 bits / 256) = 2.03125 bytes per parameter
    assert moments == 2_031_250_000


def test_higher_stage_never_raises_model_states():
    counts = _dense_counts(NUM_8B)
    split = _full_split(NUM_8B)
    previous = None
    for stage in range(4):
        train = TrainSpec(parallelism=Parallelism.from_zero(stage))
        sh = shard_states(unsharded_states(counts, split, train), train, 8, counts.largest_module)
        total = sh.params_bytes + sh.grads_bytes + sh.optimizer_states_bytes
        if previous is not None:
            assert total <= previous
        previous = total


# ---------------------------------------------------------------- DeepSpeed's estimators

# Imported per test, not at module level: a module-level importorskip would skip the ZeRO-paper tests above too.


@pytest.fixture
def ds_zero2():
    return pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")


@pytest.fixture
def ds_zero3():
    return pytest.importorskip("deepspeed.runtime.zero.stage3")


DS_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default for CPU figures
PARITY = 0.01  # issue 2: agree within 1%

CASES = [  # (num_params, largest_module_params, gpus_per_node, nodes)
    (8_030_261_248, 525_336_576, 8, 1),
    (70_553_706_496, 1_050_673_152, 8, 2),
    (1_235_814_400, 262_668_288, 4, 1),
    (124_439_808, 38_597_376, 2, 1),
]


def _ours(num_params, largest, gpus_per_node, nodes, stage, offload):
    counts = _dense_counts(num_params)
    counts = dataclasses.replace(counts, largest_module=largest)
    train = TrainSpec(method=Method.FULL, parallelism=Parallelism.from_zero(stage, offload))
    states = unsharded_states(counts, _full_split(num_params), train)
    return shard_states(states, train, gpus_per_node * nodes, largest), gpus_per_node


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("offload", [False, True])
def test_parity_with_deepspeed_zero2_estimator(case, offload, ds_zero2):
    num_params, largest, gpn, nodes = case
    cpu_ds, gpu_ds = ds_zero2.estimate_zero2_model_states_mem_needs(
        num_params, num_gpus_per_node=gpn, num_nodes=nodes, cpu_offload=offload
    )
    sh, gpn = _ours(num_params, largest, gpn, nodes, 2, Offload.OPTIMIZER if offload else Offload.NONE)
    # DeepSpeed's ZeRO-2 GPU figure = 16-bit params + 16-bit grads/N + fp32 grads/N + master/N + moments/N,
    # i.e. planner's model states plus the step-time fp32 gradient partition.
    gpu_ours = sh.params_bytes + sh.grads_bytes + sh.optimizer_states_bytes + sh.step_grad_fp32_bytes
    assert gpu_ours == pytest.approx(gpu_ds, rel=PARITY)
    if offload and 4 * gpn * nodes <= 16:
        # DeepSpeed: P * max(4 * total_gpus, 16) * 1.5 of host RAM; planner's steady state is 16P per node
        # (master + moments + fp32 grads), before DeepSpeed's 1.5 buffer factor.
        assert sh.cpu_bytes * gpn * DS_BUFFER_FACTOR == pytest.approx(cpu_ds / nodes, rel=PARITY)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("offload", [Offload.NONE, Offload.OPTIMIZER, Offload.OPTIMIZER_PARAMS])
def test_parity_with_deepspeed_zero3_estimator(case, offload, ds_zero3):
    num_params, largest, gpn, nodes = case
    cpu_ds, gpu_ds, _ = ds_zero3.estimate_zero3_model_states_mem_needs(
        num_params,
        largest,
        num_gpus_per_node=gpn,
        num_nodes=nodes,
        cpu_offload=offload is not Offload.NONE,
        cpu_offload_params=offload is Offload.OPTIMIZER_PARAMS,
        zero_init=True,
    )
    sh, gpn = _ours(num_params, largest, gpn, nodes, 3, offload)
    if num_params / (gpn * nodes) > DS_SUB_GROUP_SIZE and offload is Offload.NONE:
        # stage3.py converts one sub-group (sub_group_size elements) of the gradient partition to fp32 at a
        # time; DeepSpeed's estimator assumes the whole partition at once, so it is higher here.
        gpu_ours = sh.params_bytes + sh.optimizer_states_bytes + sh.step_grad_fp32_bytes + sh.gathered_bytes
        assert gpu_ours < gpu_ds
        return
    # DeepSpeed's ZeRO-3 estimator counts 4L + 18P/N: 16-bit params, fp32 grads, master, moments, and the
    # gathered largest layer. stage3.py also allocates a 16-bit gradient partition buffer
    # (grad_partitions_flat_buffer, 2P/N) that its estimator leaves out; planner counts it as grads, so the
    # like-for-like comparison leaves planner's grads term out.
    gpu_ours = sh.params_bytes + sh.optimizer_states_bytes + sh.step_grad_fp32_bytes + sh.gathered_bytes
    assert gpu_ours == pytest.approx(gpu_ds, rel=PARITY)
    if offload is not Offload.NONE:
        assert sh.cpu_bytes * gpn * DS_BUFFER_FACTOR == pytest.approx(cpu_ds, rel=PARITY)
