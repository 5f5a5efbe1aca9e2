"""Property tests (hypothesis) over the estimator on random valid models and training specs (issue 9.2)."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import catalog
from planner.estimate.core import estimate
from planner.estimate.count.params import count_params, largest_trainable_tensor, split_params
from planner.estimate.quant import quantized_weight_bytes
from planner.estimate.result import CATEGORIES
from planner.estimate.sharding import shard_states
from planner.estimate.states import unsharded_states
from planner.models import spec_from_config
from planner.specs import Cluster, LoraSpec, Method, Offload, Parallelism, QuantSpec, TrainSpec
from planner.units import nbytes

H100 = catalog.gpu("h100-sxm-80gb")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def models(draw, family=None, min_head_dim=16, min_heads=1, min_layers=1):
    family = family or draw(st.sampled_from(["llama", "qwen2", "mistral", "gpt2"]))
    head_dim = draw(st.sampled_from([d for d in (16, 32, 64, 128) if d >= min_head_dim]))
    kv = draw(st.integers(min_heads, 8))
    group = draw(st.integers(1, 4))
    heads = kv * group
    hidden = heads * head_dim
    layers = draw(st.integers(min_layers, 48))
    vocab = draw(st.integers(100, 200_000))
    inter = draw(st.integers(1, 4 * hidden // 8 + 1)) * 8
    if family == "gpt2":
        cfg = {"model_type": "gpt2", "n_embd": hidden, "n_layer": layers, "n_head": heads, "vocab_size": vocab,
               "n_positions": 32768, "n_inner": inter}
    else:
        cfg = {"model_type": family, "hidden_size": hidden, "num_hidden_layers": layers,
               "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": inter,
               "vocab_size": vocab, "max_position_embeddings": 32768,
               "tie_word_embeddings": draw(st.booleans())}
    return spec_from_config(cfg, f"random-{family}")


@st.composite
def trains(draw):
    method = draw(st.sampled_from(list(Method)))
    stage = draw(st.integers(0, 2 if method is Method.QLORA else 3))
    offloads = [Offload.NONE] + ([Offload.OPTIMIZER] if stage else []) + ([Offload.OPTIMIZER_PARAMS] if stage == 3 else [])
    return TrainSpec(
        method=method,
        parallelism=Parallelism.from_zero(stage, draw(st.sampled_from(offloads))),
        micro_batch=draw(st.integers(1, 8)),
        seq_len=draw(st.integers(1, 8192)),
        grad_checkpointing=draw(st.booleans()),
        lora=LoraSpec(rank=draw(st.sampled_from([1, 4, 8, 16, 64]))),
    )


def _cluster(draw_gpus: int) -> Cluster:
    return Cluster(gpu=H100, num_gpus=draw_gpus)


@SETTINGS
@given(models(), trains(), st.integers(1, 64))
def test_every_byte_figure_is_a_non_negative_int(model, train, gpus):
    est = estimate(model, train, _cluster(gpus))
    for value in est.per_gpu.by_category().values():
        assert isinstance(value, int) and value >= 0
    for value in (est.reserved_bytes, est.device_bytes, est.cpu_bytes_per_node, est.per_gpu.total_bytes):
        assert isinstance(value, int) and value >= 0
    assert est.per_gpu.total_bytes <= est.reserved_bytes <= est.device_bytes
    # Trainable never exceeds the trained model's total: the base plus what peft adds (adapters, saved copies).
    split = split_params(count_params(model), train)
    assert est.num_params == split.num_params
    assert 0 <= est.num_trainable_params <= split.num_params + split.num_adapter + split.num_saved
    if train.method is Method.FULL:
        assert est.num_trainable_params == est.num_params


@SETTINGS
@given(models(), trains(), st.integers(1, 64), st.data())
def test_monotone_in_sequence_and_micro_batch(model, train, gpus, data):
    cluster = _cluster(gpus)
    base = estimate(model, train, cluster).per_gpu.total_bytes
    longer = dataclasses.replace(train, seq_len=train.seq_len + data.draw(st.integers(1, 4096)))
    bigger = dataclasses.replace(train, micro_batch=train.micro_batch + data.draw(st.integers(1, 8)))
    assert estimate(model, longer, cluster).per_gpu.total_bytes >= base
    assert estimate(model, bigger, cluster).per_gpu.total_bytes >= base


@SETTINGS
@given(models(family="llama"), trains(), st.integers(1, 64), st.integers(1, 50_000), st.integers(1, 8))
def test_monotone_in_vocabulary_and_layers(model, train, gpus, extra_vocab, extra_layers):
    cluster = _cluster(gpus)
    base = estimate(model, train, cluster).per_gpu.total_bytes
    cfg = dict(model.config)
    wider = spec_from_config({**cfg, "vocab_size": cfg["vocab_size"] + extra_vocab}, "wider")
    deeper = spec_from_config({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + extra_layers}, "deeper")
    # ZeRO 1/2 are not monotone in the model's shape, in DeepSpeed either: a rank's gradient buffer holds the
    # whole tensors across its partition's edges and the fp64 norm copies its largest piece, so moving the edges
    # can drop up to two straddling tensors from a buffer and shrink the piece (zero_partition.py).
    slack = 0
    if train.zero_stage in (1, 2) and train.offload is Offload.NONE:
        grad_bytes = 2 if train.precision.compute_dtype in ("bf16", "fp16") else 4
        slack = (2 * grad_bytes + 8) * largest_trainable_tensor(count_params(model), train)
    assert estimate(wider, train, cluster).per_gpu.total_bytes >= base - slack
    assert estimate(deeper, train, cluster).per_gpu.total_bytes >= base - slack


@SETTINGS
@given(models(), trains(), st.integers(2, 64))
def test_higher_zero_stage_never_raises_model_states(model, train, gpus):
    # Model states per GPU: what ZeRO shards (params + grads + optimizer states held on the GPU).
    counts = count_params(model)
    split = split_params(counts, train)
    last = None
    for stage in range(0, 3 if train.method is Method.QLORA else 4):
        t = dataclasses.replace(train, parallelism=Parallelism.from_zero(stage, Offload.NONE))
        sh = shard_states(unsharded_states(counts, split, t), t, gpus, counts.largest_module)
        ms = sh.params_bytes + sh.grads_bytes + sh.optimizer_states_bytes
        if last is not None:
            assert ms <= last
        last = ms


@SETTINGS
@given(models(min_layers=2), trains(), st.integers(16, 8192))
def test_checkpointing_never_raises_activations(model, train, seq_len):
    # From 16 tokens and 2 layers up. Below that a checkpointed layer's saved RNG state (torch.utils.checkpoint
    # keeps the CPU generator state, a 5,056-byte tensor, per layer) and its kept input can outweigh the
    # activations it replaces; a one-layer model recomputes everything it would have kept.
    cluster = _cluster(1)
    train = dataclasses.replace(train, seq_len=seq_len)
    on = estimate(model, dataclasses.replace(train, grad_checkpointing=True), cluster)
    off = estimate(model, dataclasses.replace(train, grad_checkpointing=False), cluster)
    # The most activation memory alive at any phase's peak moment.
    def most(est):
        return max(b.activations_bytes for b in est.phases.values())

    assert on.phases["forward"].activations_bytes <= off.phases["forward"].activations_bytes
    assert most(on) <= most(off)


@SETTINGS
@given(models(), trains(), st.integers(1, 512))
def test_sharded_bytes_sum_to_unsharded_up_to_padding(model, train, ranks):
    counts = count_params(model)
    split = split_params(counts, train)
    states = unsharded_states(counts, split, train)
    t = dataclasses.replace(train, parallelism=Parallelism.from_zero(train.zero_stage))
    for stage, field in ((1, "optimizer_states_bytes"), (2, "grads_bytes"), (3, "params_bytes")):
        if train.method is Method.QLORA and stage == 3:
            continue
        sh = shard_states(states, dataclasses.replace(t, parallelism=Parallelism.from_zero(stage)), ranks, counts.largest_module)
        total = getattr(sh, field) * ranks
        assert getattr(states, field) <= total < getattr(states, field) + ranks


@SETTINGS
@given(models(), st.sampled_from([1, 2, 8, 16, 64]))
def test_lora_trainable_is_sum_of_r_din_plus_dout(model, rank):
    counts = count_params(model)
    train = TrainSpec(method=Method.LORA, lora=LoraSpec(rank=rank))
    split = split_params(counts, train)
    expected = sum(rank * (g.in_features + g.out_features) * g.num_modules for g in counts.linears)
    assert split.num_trainable == split.num_adapter == expected


@SETTINGS
@given(models(family="llama", min_head_dim=64, min_heads=4), st.booleans())
def test_qlora_params_bytes_below_16bit(model, double_quant):
    # Real-sized layers (hidden >= 256): each 4-bit tensor also stores a 64-byte code table and, with double
    # quantization, a 1 KiB second-level table, which only toy 16 x 8 layers fail to amortise.
    counts = count_params(model)
    qlora = TrainSpec(method=Method.QLORA, quant=QuantSpec(double_quant=double_quant))
    split = split_params(counts, qlora)
    assert quantized_weight_bytes(counts, qlora.quant) < nbytes(split.num_quantized, "bf16")
    if counts.embedding + counts.lm_head < split.num_quantized // 4:
        lora = TrainSpec(method=Method.LORA)
        b16 = unsharded_states(counts, split_params(counts, lora), lora).params_bytes
        assert unsharded_states(counts, split, qlora).params_bytes < b16


def test_categories_are_the_documented_ones():
    assert CATEGORIES == ("params", "grads", "optimizer_states", "activations", "temporaries", "overhead")
