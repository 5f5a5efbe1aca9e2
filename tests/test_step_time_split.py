"""step_time split in two (throughput.step_on_gpu, step_time_on), as --compare-gpus uses it: every field of the
StepTime equals one step_time call exactly (the same arithmetic in the same order), over random layouts, GPUs
and GPU counts."""

from __future__ import annotations

import dataclasses
import random

from planner import catalog
from planner.estimate.count.params import count_params, split_params
from planner.estimate.throughput import step_on_gpu, step_time, step_time_on
from planner.models import load_model
from planner.plan.compare_gpus import cluster_for
from planner.specs import AttnImpl, LoraSpec, Method, Offload, Parallelism, TrainSpec

MODELS = ("llama-3.1-8b", "mixtral-8x7b-v0.1", "qwen3-8b")
STAGES = ((0, Offload.NONE), (1, Offload.NONE), (2, Offload.NONE), (2, Offload.OPTIMIZER), (3, Offload.NONE),
          (3, Offload.OPTIMIZER), (3, Offload.OPTIMIZER_PARAMS))


def test_split_step_time_equals_step_time():
    rng = random.Random(15)
    gpus = catalog.gpus()
    for name in MODELS:
        model = load_model(name)
        counts = count_params(model)
        for _ in range(40):
            stage, offload = rng.choice(STAGES)
            method = rng.choice([m for m in Method if not (m is Method.QLORA and stage == 3)])
            train = TrainSpec(method=method, lora=LoraSpec(dropout=0.0),  # peft refuses dropout on MoE experts
                              micro_batch=rng.randint(1, 8),
                              seq_len=rng.choice((512, 2048, 4096)), grad_accum=rng.randint(1, 8),
                              grad_checkpointing=rng.random() < 0.5, attn_impl=rng.choice(list(AttnImpl)),
                              parallelism=Parallelism.from_zero(stage, offload))
            split = split_params(counts, train)
            gpu = rng.choice(gpus)
            mfu = rng.choice((None, 0.4))
            part = step_on_gpu(model, train, gpu, mfu=mfu, accum=float(train.grad_accum), counts=counts,
                               split=split)
            for n in rng.sample((1, 2, 8, 16, 64, 512), 3):
                cluster = cluster_for(gpu, n, 8)
                whole = step_time(model, train, cluster, mfu=mfu, counts=counts, split=split)
                assert dataclasses.astuple(step_time_on(part, cluster)) == dataclasses.astuple(whole)
