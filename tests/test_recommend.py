"""recommend(): every returned plan fits, rejections carry reasons, output is deterministic, the search
finds what brute force finds, and the sanity cases of issue 6 hold with the numbers shown."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.throughput import step_time
from planner.models import load_model
from planner.plan.estimate_cache import LAYOUTS
from planner.plan.recommend import NoPlanFits, Recommendation, recommend
from planner.plan.search import divisors
from planner.specs import AttnImpl, Cluster, Method, Offload, Parallelism, TrainSpec
from planner.units import GIB

H100 = catalog.gpu("h100-sxm-80gb")
RTX4090 = catalog.gpu("rtx-4090-24gb")
# issue 9.6: the widest search in under 5 s; in-process on a shared 2-core CI box, keep headroom.
WIDEST_SECONDS = 5.0


def _rec(model, gpu=H100, gpus=8, nodes=1, g=64, seq=2048, **kw) -> Recommendation:
    return recommend(load_model(model), TrainSpec(seq_len=seq), Cluster(gpu, gpus, nodes), global_batch_size=g, **kw)


def _fits(plan) -> tuple[bool, object]:
    """Re-check a plan with the estimator alone (not the search's cache or shortcuts)."""
    est = estimate(plan.model, plan.train, plan.cluster, margin=0.1)
    usable = int(plan.cluster.gpu.memory_bytes * 0.9)
    return est.device_bytes <= usable and est.reserved_bytes <= usable, est


def _check_recommendation(rec: Recommendation) -> None:
    for plan in [rec.plan] + [a.plan for a in rec.runners_up]:
        ok, est = _fits(plan)
        assert ok, (plan.label(), est.device_bytes / GIB)
        t = plan.train
        assert t.micro_batch * t.grad_accum * plan.cluster.num_gpus == plan.global_batch_size
    assert rec.estimate.throughput is not None and rec.estimate.throughput.tokens_per_s_per_gpu > 0
    assert rec.why and all(isinstance(w, str) and w for w in rec.why)
    for a in rec.runners_up:
        assert a.reason
    for r in rec.rejected:
        assert r.reason
        if r.reason.startswith("does not fit") and r.estimate is not None:
            usable = int(r.plan.cluster.gpu.memory_bytes * 0.9)
            assert (r.estimate.device_bytes > usable or r.estimate.reserved_bytes > usable
                    or r.estimate.cpu_bytes_per_node > 0), r.reason


# ------------------------------------------------------------------------------------------ sanity (issue 6)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_8b_full_fits_on_8x80gb_with_each_zero_stage(stage):
    # ZeRO paper per-GPU model states for 8.03B parameters on 8 GPUs: stage 1 4P + 12P/8 = 44 GB,
    # stage 2 2P + 14P/8 = 30 GB, stage 3 16P/8 = 16 GB; activations with checkpointing fit beside them.
    rec = _rec("llama-3.1-8b", method="full", zero_stages=(stage,), offloads=(Offload.NONE,))
    assert rec.plan.train.method is Method.FULL and rec.plan.train.zero_stage == stage
    ok, est = _fits(rec.plan)
    assert ok, f"ZeRO-{stage}: {est.device_bytes / GIB:.1f} GiB of {0.9 * 80:.1f} GiB"
    _check_recommendation(rec)


def test_70b_full_does_not_fit_on_8x80gb_without_offload_or_more_gpus():
    # 70.6B x 16 bytes = 1.13 TB of model states; ZeRO-3 over 8 GPUs leaves 141 GB per GPU (> 80 GB).
    with pytest.raises(NoPlanFits) as info:
        _rec("llama-3.1-70b", method="full", offloads=(Offload.NONE,))
    assert any(s.startswith("More GPUs") for s in info.value.suggestions)
    assert any(s.startswith("Offload") for s in info.value.suggestions)
    # ... and it does fit with optimizer offload, or with more GPUs.
    off = _rec("llama-3.1-70b", method="full")
    assert off.plan.train.offload is not Offload.NONE
    more = _rec("llama-3.1-70b", method="full", offloads=(Offload.NONE,), max_gpus=64)
    assert more.plan.cluster.num_gpus > 8
    _check_recommendation(off)
    _check_recommendation(more)


@pytest.mark.parametrize("seq", [512, 1024])
def test_70b_qlora_fits_on_one_80gb_gpu_at_short_sequences(seq):
    # NF4 base weights: ~0.53 bytes per parameter x 70B = ~37 GB; LoRA adapters, activations and overheads
    # fit in the remaining ~35 GB of the 72 GB usable (Dettmers et al. 2023 fine-tune 65B on one 48 GB GPU).
    rec = _rec("llama-3.1-70b", gpus=1, g=8, seq=seq, method="qlora")
    assert rec.plan.train.method is Method.QLORA and rec.plan.cluster.num_gpus == 1
    ok, est = _fits(rec.plan)
    assert ok, f"{est.device_bytes / GIB:.1f} GiB"
    assert est.device_bytes < 72 * GIB
    _check_recommendation(rec)


def test_7b_on_one_24gb_gpu_needs_lora_with_checkpointing_or_qlora():
    # Llama-2-7B: 6.74B x 16 bytes = 108 GB for full fine-tuning; LoRA keeps 13.5 GB of bf16 weights and
    # without checkpointing 32 layers of activations at 2048 tokens do not fit in 21.6 GB usable.
    kw = dict(gpu=RTX4090, gpus=1, g=8, seq=2048, offloads=(Offload.NONE,))
    rec = _rec("llama-2-7b", **kw)
    t = rec.plan.train
    assert (t.method is Method.LORA and t.grad_checkpointing) or t.method is Method.QLORA, rec.plan.label()
    with pytest.raises(NoPlanFits):
        _rec("llama-2-7b", method="full", **kw)
    with pytest.raises(NoPlanFits):
        _rec("llama-2-7b", method="lora", checkpointing=(False,), **kw)
    _check_recommendation(rec)


# ------------------------------------------------------------------------------------------ search properties


def _brute_force(model_name, gpu, gpus, g, seq, method):
    """Every layout x micro-batch on the given GPUs, through the estimator only: the best tokens/s per GPU."""
    model = load_model(model_name)
    cluster = Cluster(gpu, gpus, 1)
    best = None
    for stage, offload in LAYOUTS:
        for ckpt in (False, True):
            for attn in (AttnImpl.SDPA, AttnImpl.FLASH_ATTENTION_2):
                for micro in divisors(g // gpus):
                    try:
                        train = TrainSpec(method=method, seq_len=seq, parallelism=Parallelism.from_zero(stage, offload),
                                          grad_checkpointing=ckpt, attn_impl=attn, micro_batch=micro,
                                          grad_accum=g // (micro * gpus))
                    except PlannerError:
                        continue
                    est = estimate(model, train, cluster)
                    usable = int(gpu.capacity_bytes * 0.9)
                    if est.device_bytes > usable or est.reserved_bytes > usable:
                        continue
                    st = step_time(model, train, cluster)  # the default: the per-phase model
                    tps = st.tokens_per_rank / st.total_s
                    if best is None or tps > best:
                        best = tps
    return best


@pytest.mark.parametrize(
    ("model", "gpu", "gpus", "g", "seq", "method"),
    [
        ("llama-3.1-8b", H100, 8, 64, 2048, Method.FULL),
        ("qwen2.5-7b", RTX4090, 2, 16, 1024, Method.LORA),
        ("llama-3.1-70b", H100, 8, 32, 2048, Method.FULL),
    ],
)
def test_search_matches_brute_force(model, gpu, gpus, g, seq, method):
    best = _brute_force(model, gpu, gpus, g, seq, method)
    if best is None:
        with pytest.raises(NoPlanFits):
            _rec(model, gpu=gpu, gpus=gpus, g=g, seq=seq, method=method.value)
        return
    rec = _rec(model, gpu=gpu, gpus=gpus, g=g, seq=seq, method=method.value)
    assert rec.estimate.throughput.tokens_per_s_per_gpu == pytest.approx(best, rel=1e-9)


def test_auto_prefers_full_then_lora_then_qlora():
    full = _rec("llama-3.1-8b")
    assert full.plan.train.method is Method.FULL
    assert "prefers full" in full.why[0]
    lora = _rec("llama-3.1-70b", offloads=(Offload.NONE,))
    assert lora.plan.train.method is Method.LORA
    assert "full fine-tuning does not fit" in lora.why[0]


def test_deterministic():
    a = _rec("qwen2.5-14b", max_gpus=32, num_tokens=10**9, price_per_gpu_hour=2.0)
    b = _rec("qwen2.5-14b", max_gpus=32, num_tokens=10**9, price_per_gpu_hour=2.0)
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_runners_up_ranked_and_distinct():
    rec = _rec("llama-3.1-8b", num_runners_up=6)
    best = rec.estimate.throughput.tokens_per_s_per_gpu
    same = [a for a in rec.runners_up if a.plan.train.method is rec.plan.train.method]
    tps = [a.estimate.throughput.tokens_per_s_per_gpu for a in same]
    assert all(x <= best * (1 + 1e-9) for x in tps)
    assert tps == sorted(tps, reverse=True)
    sigs = {(a.plan.train.method, a.plan.train.zero_stage, a.plan.train.offload, a.plan.train.grad_checkpointing,
             a.plan.cluster.num_gpus) for a in rec.runners_up}
    assert len(sigs) == len(rec.runners_up)


def test_rejected_would_have_ranked_higher():
    rec = _rec("llama-3.1-70b", method="full")
    best = rec.estimate.throughput.tokens_per_s_per_gpu
    memory = [r for r in rec.rejected if r.reason.startswith("does not fit")]
    assert memory, rec.rejected
    for r in memory:
        st = step_time(r.plan.model, r.plan.train, r.plan.cluster, mfu=0.4)
        assert st.tokens_per_rank / st.total_s >= best * (1 - 1e-9)
    _check_recommendation(rec)


def test_flash_attention_2_only_on_ampere_or_newer():
    v100 = catalog.gpu("v100-sxm2-32gb")
    base = TrainSpec(seq_len=1024, precision=TrainSpec().precision)
    base = dataclasses.replace(base, precision=type(base.precision)("fp16-mixed"))
    rec = recommend(load_model("qwen2.5-0.5b"), base, Cluster(v100, 1, 1), global_batch_size=8)
    assert rec.plan.train.attn_impl is not AttnImpl.FLASH_ATTENTION_2
    assert any("compute capability" in r.reason for r in rec.rejected)
    with pytest.raises(PlannerError, match="flash_attention_2"):
        recommend(load_model("qwen2.5-0.5b"), base, Cluster(v100, 1, 1), global_batch_size=8,
                  attn_impls=(AttnImpl.FLASH_ATTENTION_2,))


def test_global_batch_must_divide():
    with pytest.raises(PlannerError, match="not divisible by the 8 data-parallel ranks"):
        _rec("llama-3.1-8b", g=60)
    with pytest.raises(PlannerError, match="--global-batch-size must be from 1"):
        _rec("llama-3.1-8b", g=0)
    with pytest.raises(PlannerError, match="--global-batch-size must be from 1"):
        _rec("llama-3.1-8b", g=10**12)


def test_gpu_counts_respect_max_and_divisibility():
    rec = _rec("llama-3.1-70b", gpus=8, g=96, max_gpus=64, offloads=(Offload.NONE,), method="full")
    n = rec.plan.cluster.num_gpus
    assert 8 <= n <= 64 and 96 % n == 0
    assert any("not divisible" in r.reason for r in rec.rejected)  # 64 does not divide 96


def test_no_fit_says_what_would_with_numbers():
    with pytest.raises(NoPlanFits) as info:
        _rec("llama-3.1-405b", gpu=RTX4090, gpus=1, g=8, method="full")
    err = info.value
    assert str(err).startswith("no full fine-tuning plan for llama-3.1-405b fits")
    assert err.suggestions
    assert any(any(ch.isdigit() for ch in s) for s in err.suggestions)
    json.dumps(err.to_dict())


def test_widest_search_is_bounded():
    t0 = time.perf_counter()
    rec = _rec("llama-3.1-405b", gpus=8, g=8192, max_gpus=4096, num_tokens=10**10, price_per_gpu_hour=2.0)
    elapsed = time.perf_counter() - t0
    assert elapsed < WIDEST_SECONDS, elapsed
    assert rec.num_estimates < 5000
    _check_recommendation(rec)


@pytest.mark.parametrize("bad", [{"mfu": 0}, {"mfu": 1.2}, {"price_per_gpu_hour": -1}, {"margin": 1.5},
                                 {"num_tokens": -1}, {"method": "sft"}])
def test_bad_values(bad):
    with pytest.raises(PlannerError):
        _rec("llama-3.1-8b", **bad)


def test_cli_recommend(cli):
    proc = cli("recommend", "--model", "llama-3.1-8b", "--gpus", "8", "--global-batch-size", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    a = json.loads(proc.stdout)
    assert a["plan"]["train"]["method"] == "full" and a["why"]
    table = cli("recommend", "--model", "llama-3.1-8b", "--gpus", "8", "-g", "64")
    assert table.returncode == 0 and "Recommended plan" in table.stdout and "Why" in table.stdout


def test_cli_no_fit_exits_1_with_one_sentence(cli):
    proc = cli("recommend", "--model", "llama-3.1-405b", "--gpu", "rtx-4090-24gb", "-g", "8", "--method", "full")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no full fine-tuning plan") and proc.stderr.count("\n") == 1
    assert "What would fit" in proc.stdout and "Traceback" not in proc.stderr


def test_cli_gpu_without_bf16_plans_fp16_unless_precision_is_typed(cli):
    # the HF Trainer refuses bf16=True on a T4 (transformers/training_args.py): an untyped recipe becomes fp16-mixed,
    # as --compare-gpus plans it, and QLoRA (fp16 compute there) stays in the auto search
    proc = cli("recommend", "-m", "llama-3.2-1b", "--gpu", "t4-16gb", "-g", "8", "-s", "1024", "--json")
    assert proc.returncode == 0, proc.stderr
    a = json.loads(proc.stdout)
    assert a["plan"]["train"]["precision"] == "fp16-mixed"
    assert any("t4-16gb has no bf16" in w and "the recipe is fp16-mixed" in w for w in a["why"])
    typed = cli("recommend", "-m", "llama-3.2-1b", "--gpu", "t4-16gb", "-g", "8", "-s", "1024", "--method", "lora",
                "--precision", "bf16-mixed", "--json")
    assert typed.returncode == 0, typed.stderr
    assert json.loads(typed.stdout)["plan"]["train"]["precision"] == "bf16-mixed" and not any("no bf16" in w for w in json.loads(typed.stdout)["why"])
    qlora = cli("recommend", "-m", "llama-3.2-1b", "--gpu", "t4-16gb", "-g", "8", "-s", "1024", "--method", "qlora",
                "--json")
    assert qlora.returncode == 0, qlora.stderr
    assert json.loads(qlora.stdout)["plan"]["train"]["precision"] == "fp16-mixed"
    # estimate's default table (QLoRA rows included) on a T4 ran into QLoRA's bf16 refusal and printed nothing
    table = cli("estimate", "-m", "llama-3.2-1b", "--gpu", "t4-16gb", "--json")
    assert table.returncode == 0, table.stderr
    payload = json.loads(table.stdout)
    assert payload["train"]["precision"] == "fp16-mixed" and {r["method"] for r in payload["rows"]} >= {"qlora"}
    assert any("t4-16gb has no bf16" in n for n in payload["modelled"]["notes"])


def test_report_on_a_gpu_without_bf16_is_written(cli, tmp_path):
    proc = cli("report", "-m", "llama-3.2-1b", "--gpu", "t4-16gb", "-o", str(tmp_path / "t4.html"))
    assert proc.returncode == 0, proc.stderr
    assert "t4-16gb has no bf16" in (tmp_path / "t4.html").read_text()


def test_cli_bad_global_batch(cli):
    proc = cli("recommend", "--model", "llama-3.1-8b", "--gpus", "8", "-g", "12")
    assert proc.returncode == 1 and "not divisible" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_out_writes_bundle(cli, tmp_path):
    pytest.importorskip("planner.emit", reason="the bundle writer is another helper's module")
    from planner import emit

    if not hasattr(emit, "write_bundle"):
        pytest.skip("planner.emit.write_bundle not written yet")
    out = tmp_path / "bundle"
    proc = cli("recommend", "--model", "qwen2.5-0.5b", "--gpus", "2", "-g", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_dir() and any(out.iterdir())


@pytest.mark.parametrize(("name", "method", "dropout"), [
    ("mixtral-8x7b-v0.1", "lora", 0.0), ("qwen3-30b-a3b", "qlora", 0.0), ("llama-3.1-8b", "lora", 0.05),
])
def test_recommend_drops_lora_dropout_where_peft_refuses_it(name, method, dropout):
    """MoE LoRA with all-linear puts lora.ParamWrapper on the experts and router, which refuses lora_dropout:
    recommend picks 0 and says why (issue 14 item 8); a dense model keeps the asked 0.05."""
    rec = recommend(load_model(name), TrainSpec(seq_len=1024), Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=8),
                    global_batch_size=64, method=method)
    assert rec.plan.train.lora.dropout == dropout
    said = [line for line in rec.why if "lora.ParamWrapper" in line]
    assert len(said) == (dropout == 0.0)
