"""Estimate per-GPU memory from Python: the same core the CLI calls.

Run: python examples/estimate_api.py
"""

from __future__ import annotations

from planner import catalog
from planner.estimate.core import estimate
from planner.models import load_model
from planner.specs import Cluster, LoraSpec, Method, TrainSpec
from planner.units import fmt_gib

model = load_model("llama-3.1-8b")
cluster = Cluster(gpu=catalog.gpu("a100-sxm-80gb"), num_gpus=8)

for method in (Method.FULL, Method.LORA, Method.QLORA):
    for stage in (0, 2):
        train = TrainSpec(
            method=method,
            zero_stage=stage,
            lora=LoraSpec(rank=16, targets=("all-linear",)),
            micro_batch=2,
            seq_len=4096,
            grad_checkpointing=True,
        )
        est = estimate(model, train, cluster)
        b = est.per_gpu
        print(
            f"{method.value:5s} ZeRO-{stage}: trainable {est.num_trainable_params:>13,}  "
            f"params {fmt_gib(b.params_bytes):>10}  grads {fmt_gib(b.grads_bytes):>10}  "
            f"optimizer {fmt_gib(b.optimizer_states_bytes):>10}  activations {fmt_gib(b.activations_bytes):>10}  "
            f"device peak {fmt_gib(est.device_bytes):>10} at {est.peak_phase:15s} fits={est.fits}"
        )
