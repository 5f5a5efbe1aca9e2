"""FSDP2's per-rank states (estimate/fsdp2.py, issue 18) against closed forms of torch 2.13's fully_shard and
the 2-rank gloo profiles of tests/test_profile_fsdp2.py (measured: tiny llama h64 l2 v512, bf16-mixed)."""

from __future__ import annotations

import math

from presets import tiny

from planner.estimate.count.params import count_params
from planner.estimate.fsdp2 import Tensor, fsdp2_groups, fsdp2_states
from planner.models import spec_from_config
from planner.specs import LoraSpec, Method, Parallelism, Precision, TrainSpec


def _llama(**overrides):
    return spec_from_config(tiny("llama", vocab_size=512, **overrides), "tiny-llama")


def _train(method=Method.FULL, precision=Precision.BF16_MIXED):
    return TrainSpec(method=method, precision=precision, parallelism=Parallelism.fsdp2(), lora=LoraSpec(rank=8))


def test_full_fine_tuning_states_are_the_measured_ones():
    model = _llama(intermediate_size=172)
    st = fsdp2_states(count_params(model), _train(), model.num_layers, 2)
    # measured on both ranks (planner profile, fsdp2, 2 ranks over gloo): 156,480 parameters in fp32, halved
    assert (st.params_bytes, st.grads_bytes, st.optimizer_states_bytes) == (312_960, 312_960, 626_004)
    # every group's all-gather outputs in bf16 add up to one bf16 copy of the model
    assert st.all_unsharded_bytes == 2 * 156_480
    # the root: embedding and output head 512 x 64 each, the final norm 64
    assert st.root_unsharded_bytes == 2 * (2 * 512 * 64 + 64)


def test_lora_shards_the_frozen_base_and_reduces_only_the_adapters():
    model = _llama(intermediate_size=172)
    st = fsdp2_states(count_params(model), _train(Method.LORA), model.num_layers, 2)
    assert (st.params_bytes, st.grads_bytes, st.optimizer_states_bytes) == (349_952, 36_992, 74_096)  # measured
    assert st.root_reduce_input_bytes == 0  # nothing trains in the root group


def test_uneven_dim0_pads_the_shard_and_the_last_rank_owns_fewer_rows():
    t = Tensor(dim0=5, numel=5 * 3, trainable=True, dtype="fp32")
    assert t.padded_shard(2) == 3 * 3 and [t.local_shard(2, r) for r in (0, 1)] == [9, 6]
    assert t.padded_shard(4) == 2 * 3 and [t.local_shard(4, r) for r in range(4)] == [6, 6, 3, 0]


def test_pure_bf16_keeps_bf16_shards_and_groups_cover_every_parameter():
    model = _llama()
    counts = count_params(model)
    train = _train(precision=Precision.BF16)
    gs = fsdp2_groups(counts, train, model.num_layers)
    assert sum(g.repeats * sum(t.numel for t in g.tensors) for g in gs) == counts.num_params
    st = fsdp2_states(counts, train, model.num_layers, 4)
    assert st.params_bytes == 2 * math.ceil(counts.num_params / 4)


def test_cpu_offload_moves_the_sharded_states_to_the_host_on_a_gpu():
    from planner import catalog
    from planner.estimate.core import estimate
    from planner.specs import Cluster, FsdpConfig

    model = _llama(intermediate_size=172)
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=2)
    on = estimate(model, TrainSpec(seq_len=64, parallelism=Parallelism.fsdp2(FsdpConfig(cpu_offload=True))), cluster)
    off = estimate(model, TrainSpec(seq_len=64, parallelism=Parallelism.fsdp2()), cluster)
    assert on.per_gpu.model_states_bytes == 0 and off.per_gpu.params_bytes == 312_960
    assert on.cpu_bytes_per_node == 2 * (312_960 + 312_960 + 626_004)
    # on CPU every state is host memory already: offload changes nothing (the validation cell measures it)
    cpu_on = estimate(model, TrainSpec(seq_len=64, parallelism=Parallelism.fsdp2(FsdpConfig(cpu_offload=True))),
                      cluster, device="cpu")
    cpu_off = estimate(model, TrainSpec(seq_len=64, parallelism=Parallelism.fsdp2()), cluster, device="cpu")
    assert cpu_on.per_gpu == cpu_off.per_gpu
