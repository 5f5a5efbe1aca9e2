"""`planner report` without a browser: colours, downsampling, escaping, the writer, the CLI's answers.

The browser checks (rendering, offline, timing) are in test_report_browser.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from report_synth import CATS, events_from_wide, synthetic_timeline, write_profile_dir

from planner.errors import PlannerError
from planner.report import figures, html, palette, plotlyjs, timeline
from planner.report.html import Code, Figure, KeyValues, Paragraph, Report, Section, Table
from planner.report.profile_source import wide_timeline

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "</script><script>alert(\"x\")</script><img src=x onerror=alert(1)>'&"


def _totals(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(CATS)].sum(axis=1).to_numpy()


# ------------------------------------------------------------------ colours


def test_each_category_has_its_own_colour_and_other_is_overhead():
    colours = [palette.CATEGORY_COLORS[c] for c in palette.CATEGORIES]
    assert len(set(colours)) == len(palette.CATEGORIES)
    assert palette.color("other") == palette.color("overhead")
    assert palette.label("other") == palette.label("overhead")


def _trace_colour(trace) -> str | list:
    if trace.type == "bar":
        return trace.marker.color
    return trace.fillcolor or trace.line.color


def test_every_figure_draws_a_category_in_its_colour():
    cats = {c: (i + 1) * 2**30 for i, c in enumerate(palette.CATEGORIES)}
    row = figures.BarRow("full", "Z0", cats, device_bytes=22 * 2**30, headroom_bytes=-1, fits=False)
    built = [
        figures.estimate_bars([row, row], capacity_bytes=80 * 2**30, usable_bytes=72 * 2**30, gpu_name="g", title="t"),
        figures.phase_bars({"forward": cats, "backward": cats}, peak_phase="forward", title="t"),
    ]
    frame = synthetic_timeline(1, 3)
    built += [fig for _, fig in timeline.timeline_figures(frame, title="t")]
    by_label = {palette.label(c): palette.color(c) for c in palette.CATEGORIES}
    seen = set()
    for fig in built:
        for trace in fig.data:
            if trace.name in by_label:
                assert _trace_colour(trace) == by_label[trace.name], (trace.name, fig.layout.title.text)
                seen.add(trace.name)
    assert seen == set(by_label)
    # Estimate vs measured colours each bar by its category (one colour per x position).
    rows = [(c, v, v) for c, v in cats.items() if c != "overhead"] + [("other", 5, 5), ("allocated", 9, 9)]
    fig = figures.estimate_vs_measured(rows, peak_bytes=9, title="t")
    expected = [palette.color(c) for c in palette.CATEGORIES] + ["#555555"]
    assert list(fig.data[0].marker.color) == expected == list(fig.data[1].marker.color)


def test_signed_error_labels():
    rows = [("params", 110, 100), ("grads", 90, 100), ("activations", 0, 0), ("temporaries", 7, 0),
            ("allocated", 207, 200)]
    fig = figures.estimate_vs_measured(rows, peak_bytes=200, title="t")
    assert list(fig.data[1].text) == ["+10.0%", "-10.0%", "new", "+3.5%"]  # rows with 0 and 0 are left out
    assert list(fig.data[1].customdata) == ["+5.00%", "-5.00%", "+3.50%", "+3.50%"]
    assert figures.signed_error(1, 0) is None and figures.error_label(0, 0) == "n/a"


# ------------------------------------------------------------------ downsampling


def test_downsampling_keeps_every_step_peak_the_global_peak_and_real_rows():
    full = synthetic_timeline(2, 200, samples_per_phase=30, seed=3)  # 24,000 samples per rank
    small = timeline.downsample(full, max_points=400)
    for rank in (0, 1):
        f = full[full["rank"] == rank]
        s = small[small["rank"] == rank]
        assert len(s) <= 400 + 200 + 3 + 10, len(s)  # buckets x2, one per step, ends and global peak
        assert len(s) < len(f) / 10
        ft, st = _totals(f), _totals(s)
        assert st.max() == ft.max()
        per_step_full = pd.Series(ft).groupby(f["step"].to_numpy()).max()
        per_step_small = pd.Series(st).groupby(s["step"].to_numpy()).max()
        pd.testing.assert_series_equal(per_step_full, per_step_small)
        assert s["t_s"].iloc[0] == f["t_s"].min() and s["t_s"].iloc[-1] == f["t_s"].max()
        assert s["t_s"].is_monotonic_increasing
        # Every kept row is a real sample with its real breakdown.
        merged = s.merge(f, on=["t_s"], suffixes=("", "_full"))
        assert len(merged) == len(s)
        for c in CATS:
            assert (merged[c] == merged[f"{c}_full"]).all()


def test_downsampling_keeps_local_dips_and_leaves_short_timelines_alone():
    short = synthetic_timeline(1, 3)
    assert len(timeline.downsample(short, max_points=1000)) == len(short)
    full = synthetic_timeline(1, 100, samples_per_phase=40)
    small = timeline.downsample(full, max_points=200)
    # Every bucket's minimum survives: the lowest point of the whole run is kept too.
    assert _totals(small).min() == _totals(full).min()


def test_downsampling_handles_unsorted_rows_and_missing_steps():
    full = synthetic_timeline(1, 50, samples_per_phase=20).sample(frac=1.0, random_state=1)
    small = timeline.downsample(full, max_points=100)
    assert small["t_s"].is_monotonic_increasing
    assert _totals(small).max() == _totals(full).max()
    no_step = full.drop(columns=["step"])
    assert _totals(timeline.downsample(no_step, max_points=100)).max() == _totals(full).max()


def test_phase_bands_are_contiguous_and_capped():
    t = np.arange(10_000, dtype=float)
    phases = np.array(["forward", "backward"])[(np.arange(10_000) // 3) % 2]
    bands = timeline.phase_bands(t, phases, max_bands=100)
    assert 1 < len(bands) <= 100
    assert bands[0][1] == t[0] and bands[-1][2] == t[-1]
    assert all(a[2] == b[1] for a, b in zip(bands, bands[1:], strict=False))
    exact = timeline.phase_bands(t[:30], phases[:30])
    assert [b[0] for b in exact] == ["forward", "backward"] * 5


def test_wide_timeline_adds_up_to_the_allocated_total():
    wide = synthetic_timeline(2, 4)
    events = events_from_wide(wide)
    rebuilt = wide_timeline(events)
    np.testing.assert_array_equal(_totals(rebuilt), events["allocated_bytes"].to_numpy())
    assert "reserved" not in rebuilt
    events["reserved_bytes"] = events["allocated_bytes"] + 2**21
    np.testing.assert_array_equal(wide_timeline(events)["reserved"], events["reserved_bytes"].to_numpy())
    with pytest.raises(PlannerError, match="delta_bytes"):
        wide_timeline(events.drop(columns=["delta_bytes"]))


# ------------------------------------------------------------------ the HTML writer


def _report_with(text: str) -> Report:
    fig = go.Figure(go.Bar(x=[palette.text(text)], y=[1], meta=[text]))  # meta: a raw, unescaped string
    fig.update_layout(title=palette.text(text))
    blocks = [
        Paragraph(text), KeyValues([(text, text)], caption=text), Table([text], [[text]], caption=text),
        Code(text, text), Figure(fig, name="hostile"),
    ]
    return Report(title=text, sections=[Section(text, "s1", blocks, subtitle=text)], generated=text, summary=text)


def test_every_user_string_is_escaped():
    out = html.render(_report_with(HOSTILE), plotly_js="/* plotly */")
    assert "<script>alert" not in out and "<img" not in out and "onerror=alert(1)>" not in out
    assert html.esc(HOSTILE) in out
    # Scripts: plotly.js, one per figure, the runtime; nothing else.
    assert len(re.findall(r"<script\b", out)) == 3
    # The figure's JSON cannot close its script element: plotly writes "<" as \u003c.
    fig_script = re.search(r"__plannerFigures.*?</script>", out, re.S).group(0)
    assert "</script>" == fig_script[-9:] and "</script" not in fig_script[:-9]
    assert "\\u003c" in fig_script


def test_content_security_policy_forbids_network():
    out = html.render(Report("t", []), plotly_js="")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', out).group(1)
    assert "default-src 'none'" in csp and "connect-src" not in csp and "http" not in csp


def test_write_refuses_directories_and_non_html_and_leaves_no_temp_files(tmp_path):
    report = Report("t", [])
    with pytest.raises(PlannerError, match="directory"):
        html.write(report, tmp_path)
    with pytest.raises(PlannerError, match=".html"):
        html.write(report, tmp_path / "r.txt")
    size = html.write(report, tmp_path / "sub" / "r.html")
    assert (tmp_path / "sub" / "r.html").stat().st_size == size
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.html"]


def test_duplicate_figure_names_are_refused():
    fig = go.Figure(go.Bar(x=[1], y=[1]))
    with pytest.raises(ValueError, match="unique"):
        html.render(Report("t", [Section("s", "s", [Figure(fig, "a"), Figure(fig, "a")])]), plotly_js="")


def test_basic_plotly_bundle_matches_the_installed_plotly_and_is_used():
    assert plotlyjs.installed_version() == plotlyjs.BASIC_VERSION, (
        "plotly was upgraded: update planner/report/vendor/plotly-basic.min.js (see planner/report/plotlyjs.py)"
    )
    basic = plotlyjs.basic_bundle()
    assert basic is not None and f"v{plotlyjs.BASIC_VERSION}" in basic[:200]
    assert plotlyjs.bundle_for([go.Figure(go.Bar(x=[1], y=[1])), go.Figure(go.Scatter(x=[1], y=[1]))]) is basic
    assert plotlyjs.bundle_for([go.Figure(go.Heatmap(z=[[1]]))]) == plotlyjs.full_bundle()


def test_report_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import planner.report.build, planner.report.html, planner.report.figures, planner.report.timeline\n"
        "import planner.report.profile_source, planner.cli.report_cmd\n"
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'bitsandbytes') if m in sys.modules]\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ------------------------------------------------------------------ the command


def _one_sentence_error(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _figure_names(path: Path) -> list[str]:
    text = path.read_text()
    return re.search(r'<meta name="planner-figures" content="([^"]*)">', text).group(1).split(",")


def test_report_of_a_profile_directory(cli, tmp_path):
    prof = write_profile_dir(tmp_path / "p", synthetic_timeline(2, 5, cuda=False))
    out = tmp_path / "r.html"
    proc = cli("report", "--profile", str(prof), "-o", str(out), "--no-accuracy")
    assert proc.returncode == 0, proc.stderr
    names = _figure_names(out)
    assert {"fig-timeline-0-rank-0", "fig-timeline-0-rank-1", "fig-phases-0", "fig-compare-0"} <= set(names)
    text = out.read_text()
    assert "Estimate vs measured, per rank (signed: negative = underestimate)" in text and "status oom" not in text


def test_report_shows_a_failed_profile_status(cli, tmp_path):
    prof = write_profile_dir(tmp_path / "p", synthetic_timeline(1, 2), status="oom",
                             message="rank 0 ran out of memory during step 1 backward.")
    out = tmp_path / "r.html"
    proc = cli("report", "--profile", str(prof), "-o", str(out), "--no-accuracy")
    assert proc.returncode == 0, proc.stderr
    assert "status oom: rank 0 ran out of memory during step 1 backward." in out.read_text()


def test_damaged_profile_gives_one_sentence_and_no_file(cli, tmp_path):
    prof = write_profile_dir(tmp_path / "p", synthetic_timeline(1, 2))
    data = (prof / "timeline.parquet").read_bytes()
    (prof / "timeline.parquet").write_bytes(data[: len(data) // 2])
    out = tmp_path / "r.html"
    line = _one_sentence_error(cli("report", "--profile", str(prof), "-o", str(out)))
    assert "timeline.parquet" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "nothing to report"),
        (("--profile", "/nonexistent/profile"), "/nonexistent/profile"),
        (("--plan", "/nonexistent/bundle"), "/nonexistent/bundle"),
        (("--model", "llama-3.1-8b", "--max-points", "5"), "--max-points"),
        (("--compare-gpus", "--plan", "/nonexistent/bundle"), "--compare-gpus"),
    ],
)
def test_bad_invocations_give_one_sentence(cli, tmp_path, args, needle):
    out = tmp_path / "r.html"
    line = _one_sentence_error(cli("report", *args, "-o", str(out)))
    assert needle in line
    assert not out.exists()


def test_output_must_be_an_html_file(cli, tmp_path):
    prof = write_profile_dir(tmp_path / "p", synthetic_timeline(1, 2))
    assert "HTML file" in _one_sentence_error(cli("report", "--profile", str(prof), "-o", str(tmp_path)))
    assert "HTML file" in _one_sentence_error(cli("report", "--profile", str(prof), "-o", str(tmp_path / "r.txt")))


def test_accuracy_table_is_included(cli, tmp_path):
    prof = write_profile_dir(tmp_path / "p", synthetic_timeline(1, 2))
    csv = tmp_path / "accuracy.csv"
    pd.DataFrame({"cell": ["a", "b", "c"], "method": ["full", "lora", "lora"],
                  "signed_error": [0.01, -0.02, 0.004]}).to_csv(csv, index=False)
    out = tmp_path / "r.html"
    proc = cli("report", "--profile", str(prof), "--accuracy", str(csv), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "fig-accuracy" in _figure_names(out)
    assert "median |error| 1.00%, max |error| 2.00%, underestimates in 33% of cells." in out.read_text()
    (tmp_path / "bad.csv").write_bytes(b"\x00\xff\xfe")
    assert "--accuracy" in _one_sentence_error(
        cli("report", "--profile", str(prof), "--accuracy", str(tmp_path / "bad.csv"), "-o", str(out))
    )


@pytest.mark.slow
def test_report_of_a_recommendation_bundle(cli, tmp_path):
    bundle = tmp_path / "bundle"
    rec = cli("recommend", "-m", "llama-3.1-8b", "-g", "64", "--gpus", "8", "--json", "--out", str(bundle), timeout=120)
    assert rec.returncode == 0, rec.stderr
    (bundle / "plan.json").write_text(rec.stdout)
    plan = json.loads(rec.stdout)
    out = tmp_path / "r.html"
    proc = cli("report", "--plan", str(bundle), "-o", str(out), "--no-accuracy")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "fig-plan-bars" in _figure_names(out)
    assert "Rejected plans and the reason each lost" in text and "Runners-up, best first" in text
    for entry in plan["rejected"] + plan["runners_up"]:
        assert html.esc(entry["reason"]) in text
    assert html.esc((bundle / "launch.sh").read_text()) in text


def test_estimate_report_has_every_combination_and_escapes_the_model_name(cli, tmp_path):
    from planner import catalog

    name = 'evil<script>alert("pwned")<b>\'quoted\''
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(catalog.model_config("qwen2.5-0.5b")))
    out = tmp_path / "r.html"
    proc = cli("report", "--model", str(config), "--gpus", "8", "-o", str(out), "--no-accuracy")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "fig-estimate-bars" in _figure_names(out)
    assert name not in text and "<script>alert" not in text
    assert html.esc(name) in text
    # 3 methods x ZeRO 0-3 x valid offloads: full 8, LoRA 8, QLoRA 7 (no parameter offload); FSDP2 with and
    # without resharding for each method.
    assert "29 configurations estimated" in text
    bars = re.search(r'id="fig-estimate-bars".*?push\(\{id:"fig-estimate-bars",f:(\{.*?\})\}\);</script>', text, re.S)
    data = json.loads(bars.group(1))["data"]
    stacks = [t for t in data if t["type"] == "bar"]
    assert len(stacks) == len(palette.CATEGORIES) and all(len(t["x"][0]) == 29 for t in stacks)


def test_report_of_a_profile_that_failed_before_any_peak(cli, tmp_path):
    """A run that failed in setup: no peak, no phases, an empty timeline; the report says so and exits 0."""
    import hashlib

    prof = write_profile_dir(tmp_path / "p", synthetic_timeline(1, 1), status="failed",
                             message="rank 0 failed during setup (model): RuntimeError: boom.")
    events = events_from_wide(synthetic_timeline(1, 1)).iloc[0:0]
    events.to_parquet(prof / "timeline.parquet", index=False)
    summary = json.loads((prof / "summary.json").read_text())
    data = (prof / "timeline.parquet").read_bytes()
    summary["files"]["timeline.parquet"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    summary["ranks"][0].update(peak=None, phases={}, steady_state=False, steps_completed=0)
    (prof / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "r.html"
    proc = cli("report", "--profile", str(prof), "-o", str(out), "--no-accuracy")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "status failed: rank 0 failed during setup (model): RuntimeError: boom." in text
    assert "This profile has no timeline samples." in text
    assert _figure_names(out) == [""]


# ---------------------------------------------------------------- issue 14 item 17

VALIDATION_TITLE = "How planner was validated (tiny models on CPU)"


def test_validation_table_is_not_in_an_estimate_report_by_default(cli, tmp_path):
    """An 8B-on-H100 report must not carry the CPU accuracy table of tiny models, where a reader takes it for this
    estimate's accuracy (reports/accuracy.csv exists in the repository the CLI runs in)."""
    assert (ROOT / "reports" / "accuracy.csv").is_file()
    out = tmp_path / "r.html"
    proc = cli("report", "--model", "qwen2.5-0.5b", "--gpus", "2", "-o", str(out), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "fig-accuracy" not in _figure_names(out)
    assert "Accuracy table" not in text and VALIDATION_TITLE not in text


def test_validation_section_when_asked_says_what_it_is(cli, tmp_path):
    out = tmp_path / "r.html"
    proc = cli("report", "--model", "qwen2.5-0.5b", "--gpus", "2", "--validation", "-o", str(out), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "fig-accuracy" in _figure_names(out)
    assert f"<h2>{VALIDATION_TITLE}</h2>" in text
    assert "not the accuracy of the estimate" in text
