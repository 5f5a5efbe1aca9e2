"""--compare-gpus over FSDP2 (issue 18): the layouts searched, and each shown plan's memory is estimate()'s own for
that plan. Without FSDP2 configs the search is the DDP/DeepSpeed one it was (tests/test_compare_gpus.py)."""

from __future__ import annotations

from planner import catalog
from planner.estimate.core import estimate
from planner.models import load_model
from planner.plan.compare_gpus import cluster_for, compare_gpus
from planner.plan.compare_layouts import layout_trains
from planner.specs import FsdpConfig, Method, Parallelism, Precision, TrainSpec

NO_RESHARD = FsdpConfig(reshard_after_forward=False)


def test_layouts_are_deepspeeds_then_fsdp2s():
    base = TrainSpec()
    plain = layout_trains(base, Method.FULL, Precision.BF16_MIXED)
    both = layout_trains(base, Method.FULL, Precision.BF16_MIXED, (FsdpConfig(), NO_RESHARD))
    assert not any(t.uses_fsdp2 for t in plain)
    # per checkpointing setting: DeepSpeed's layouts in today's order, then the two FSDP2 ones
    assert [t for t in both if not t.uses_fsdp2] == plain and len(both) == len(plain) + 4
    only = layout_trains(base, Method.FULL, Precision.BF16_MIXED, (FsdpConfig(),), zero_layouts=False)
    assert [(t.parallelism.fsdp_config, t.grad_checkpointing) for t in only] == [(FsdpConfig(), False),
                                                                                  (FsdpConfig(), True)]


def test_fsdp2_rows_are_the_estimate_of_their_plan():
    model = load_model("qwen2.5-7b")
    some = tuple(catalog.gpus()[::6])
    rows = compare_gpus(model, TrainSpec(), gpus=some, fsdp_configs=(FsdpConfig(), NO_RESHARD), zero_layouts=False,
                        methods=(Method.FULL,))
    fitting = [r for r in rows if r.fits]
    assert fitting and all(r.engine == "fsdp2" and r.zero_stage == 0 for r in fitting)
    for r in fitting:
        gpu = catalog.gpu(r.gpu)
        train = TrainSpec(precision=Precision(r.precision), grad_checkpointing=r.grad_checkpointing,
                          parallelism=Parallelism.fsdp2(FsdpConfig.from_dict(r.fsdp)))
        assert estimate(model, train, cluster_for(gpu, r.num_gpus)).device_bytes == r.device_bytes
