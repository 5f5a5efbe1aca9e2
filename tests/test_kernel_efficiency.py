"""The per-GPU-kind kernel efficiencies live in the GPU catalog with their provenance (issue 22 item 2), and the
time model reads them from there."""

from __future__ import annotations

from planner import catalog
from planner.estimate import throughput


def test_catalog_records_state_efficiencies_with_their_source():
    rows = catalog.kernel_efficiencies()
    assert {name for name, *_ in rows} >= {"a100-sxm-80gb", "a100-sxm-40gb", "h100-sxm-80gb", "h200-sxm-141gb"}
    for name, matmul, attention, source in rows:
        assert 0 < matmul <= 1 and 0 < attention <= 1, name
        assert "calibrat" in source and "arXiv" in source, name  # how the matmul figure was set, the attention paper


def test_time_model_reads_the_catalog():
    for name, matmul, attention, _ in catalog.kernel_efficiencies():
        eff = throughput.kernel_efficiency(name)
        assert (eff.matmul, eff.attention) == (matmul, attention)
    # a GPU without a published run keeps the H100 pair, the lower and safer one
    assert throughput.kernel_efficiency("l4-24gb") == throughput.DEFAULT_KERNEL_EFFICIENCY
    assert throughput.DEFAULT_KERNEL_EFFICIENCY.matmul == throughput.kernel_efficiency("h100-sxm-80gb").matmul
