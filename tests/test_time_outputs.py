"""Issue 22 item 4: where the time goes, visible in every output: the estimate table (with or without
--tokens), --compare-gpus (terminal and --json), recommend's runners-up and the HTML report's tables. The step is
compute + exposed communication + the GPU optimizer step + offload, and --mfu is documented as an override.
"""

from __future__ import annotations

import json

import pytest
from cli_harness import run_inprocess

from planner import catalog
from planner.estimate.throughput import step_time
from planner.models import load_model
from planner.plan.advice import lost_because
from planner.report.estimate_section import gpu_table
from planner.specs import Cluster, Parallelism, Plan, TrainSpec

EST = ["estimate", "-m", "llama-3.2-1b", "--gpus", "8", "--method", "full", "--zero", "3", "--offload", "none"]


def _run(monkeypatch, args, columns=200):
    monkeypatch.setenv("COLUMNS", str(columns))
    res = run_inprocess(args)
    assert res.code == 0 and not res.internal, (res.stderr, res.internal)
    return res.stdout


@pytest.mark.parametrize("columns", [80, 200])
def test_estimate_shows_the_step_breakdown_without_tokens(monkeypatch, columns):
    out = _run(monkeypatch, EST, columns)
    assert "tokens/s" in out and "compute" in out and "exposed" in out and "optim-" in out and "offload" in out
    assert "give --tokens" in out  # time and cost need the tokens
    row = json.loads(run_inprocess([*EST, "--json"]).stdout)["rows"][0]
    step = row["throughput"]["step"]
    # the terminal's compute column is the forward and backward, the optimizer step its own column
    compute = step["matmul_s"] + step["attention_s"] + step["elementwise_s"] + step["dequant_s"]
    assert f"{compute:.2f}" in out and f"{row['throughput']['step_time_s']:.2f}" in out


def test_compare_gpus_gives_each_plans_step(monkeypatch):
    args = ["estimate", "-m", "llama-3.2-1b", "--gpus", "8", "--compare-gpus", "--tokens", "1e9"]
    rows = json.loads(run_inprocess([*args, "--json"]).stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    fitting = [r for r in rows if r["fits"]]
    assert fitting and all(r["step"] is not None for r in fitting)
    for r in fitting:
        s = r["step"]
        parts = (s["matmul_s"] + s["attention_s"] + s["elementwise_s"] + s["dequant_s"] + s["optimizer_s"]
                 + s["exposed_communication_s"] + s["offload_transfer_s"] + s["cpu_optimizer_s"])
        assert parts == pytest.approx(r["step_time_s"], rel=1e-9)
    wide = _run(monkeypatch, args, 250)
    assert "step" in wide and "exposed" in wide and "offload" in wide
    narrow = _run(monkeypatch, args, 80)  # the stacked form says it in words
    assert "step " in narrow and "= compute " in narrow and "+ optimizer " in narrow
    html = gpu_table(rows)
    assert {"step s", "compute s", "exposed comm s", "optimizer s", "offload s"} <= set(html.columns)


def test_a_plan_losing_on_communication_says_so():
    """ZeRO-2 (overlap_comm off by default) against ZeRO-3 on the same GPUs: the same compute, more exposed
    communication; the reason names communication, not compute (it used to compare all of the communication,
    hidden or not, and fall back to compute)."""
    from planner.plan.search import Scored

    model = load_model("llama-3.1-8b")
    cluster = Cluster(catalog.gpu("h100-sxm-80gb"), 8, 1)
    scored = []
    for stage in (3, 2):
        train = TrainSpec(parallelism=Parallelism.from_zero(stage), seq_len=2048, micro_batch=2, grad_accum=4)
        st = step_time(model, train, cluster)
        plan = Plan(model=model, train=train, cluster=cluster, global_batch_size=64)
        scored.append(Scored(key=(), plan=plan, step=st, tokens_per_s=st.tokens_per_rank / st.total_s * 8))
    assert scored[1].tokens_per_s < scored[0].tokens_per_s
    assert "communication compute does not hide" in lost_because(*scored)


def test_mfu_is_documented_as_an_override(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    for cmd in ("estimate", "recommend", "report"):
        out = run_inprocess([cmd, "--help"]).stdout
        assert "Override the step-time model" in " ".join(out.split()), cmd
