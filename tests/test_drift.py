"""planner/validate/drift.py: the comparison scripts/drift.sh prints (versions, tests, cells, categories)."""

from __future__ import annotations

from pathlib import Path

from planner.validate import drift
from planner.validate.report import csv_text
from planner.validate.results import CATEGORIES, CellResult, RankResult

ROOT = Path(__file__).resolve().parent.parent


def test_versions_differ_by_public_version_and_normalized_name():
    lock = drift.read_pins("# header\ntorch==2.13.0\nhuggingface_hub==2.4.0\nPyYAML==6.0.4\ntransformers==5.23.0\n")
    freeze = drift.read_pins("-e /work/main\ntorch==2.13.0+cpu\nhuggingface-hub==2.4.0\npyyaml==6.0.4\n"
                             "transformers==5.24.0\nnew-dep==1.0\n")
    assert drift.version_changes(lock, freeze) == [("new-dep", "-", "1.0"), ("transformers", "5.23.0", "5.24.0")]
    assert drift.version_changes(lock, lock) == []


def test_the_lock_pins_every_package_exactly_once():
    """requirements/lock.txt: one exact pin per project, torch without a local label (pip must find it)."""
    text = (ROOT / "requirements" / "lock.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    pins = drift.read_pins(text)
    assert len(pins) == len(lines)
    for key in ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "deepspeed", "pytest", "ruff"):
        assert key in pins, key
    assert "+" not in pins["torch"][1]
    # the lock holds releases the estimator says it models (planner/modelled.py), so a fresh clone gets no note
    from planner.modelled import LIBRARIES, minor

    for name, releases in LIBRARIES.items():
        assert minor(pins[name][1]) in releases, (name, pins[name][1], releases)


def _junit(path: Path, cases: dict[str, str]) -> Path:
    body = []
    for name, status in cases.items():
        inner = {"passed": "", "failed": '<failure message="assert (557380, 596048)&#10;more">tb</failure>',
                 "xfailed": '<skipped type="pytest.xfail" message="diagnosed"/>',
                 "skipped": '<skipped type="pytest.skip" message="no gpu"/>'}[status]  # fmt: skip
        body.append(f'<testcase classname="tests.test_activations" name="{name}">{inner}</testcase>')
    path.write_text(f'<testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>')
    return path


def test_test_outcomes_that_moved(tmp_path):
    lock = drift.read_junit(_junit(tmp_path / "a.xml", {"t1": "passed", "t2": "passed", "t3": "xfailed", "t4": "skipped"}))
    new = drift.read_junit(_junit(tmp_path / "b.xml", {"t1": "passed", "t2": "failed", "t3": "xfailed", "t5": "passed"}))
    assert lock["tests/test_activations.py::t3"].status == "xfailed"
    moved = drift.test_changes(lock, new)
    assert [(t, a, b) for t, a, b, _ in moved] == [
        ("tests/test_activations.py::t2", "passed", "failed"),
        ("tests/test_activations.py::t4", "skipped", "absent"),
        ("tests/test_activations.py::t5", "absent", "passed"),
    ]
    assert moved[0][3] == "assert (557380, 596048)"  # the first line of the failure


def _cell(cid: str, *ranks: tuple[dict[str, int], dict[str, int]], family="llama", ckpt="True") -> CellResult:
    full = dict.fromkeys(CATEGORIES, 0)
    rr = tuple(RankResult(i, {**full, **est}, {**full, **meas}, "backward", "backward", 1)
               for i, (est, meas) in enumerate(ranks))  # fmt: skip
    inputs = {"family": family, "method": "full", "zero": "0", "ckpt": ckpt, "attn": "sdpa", "precision": "fp32"}
    return CellResult(cid, inputs, "ok", "", rr)


def _csv(path: Path, cells: list[CellResult]) -> dict[str, CellResult]:
    path.write_text(csv_text(cells))
    return drift.read_cells(path)


def test_cells_and_categories_that_moved(tmp_path):
    same = _cell("same", ({"params": 1000, "activations": 500}, {"params": 1000, "activations": 500}), family="gpt2",
                 ckpt="False")  # fmt: skip
    base = ({"params": 1000, "activations": 500}, {"params": 1000, "activations": 500})
    lock = _csv(tmp_path / "lock.csv", [same, _cell("moves", base), _cell("gone", base), _cell("broke", base)])
    # "moves": 300 more measured activations (a rotary table kept for backward), estimate unchanged: now -20%.
    moved = _cell("moves", ({"params": 1000, "activations": 500}, {"params": 1000, "activations": 800}))
    new = _csv(tmp_path / "new.csv", [same, moved, _cell("added", base),
                                      CellResult("broke", _cell("x", base).inputs, "failed", "rank 0 failed")])
    assert new["moves"].ranks[0].measured["activations"] == 800 and new["broke"].status == "failed"
    moves = {m.id: m for m in drift.cell_changes(lock, new)}
    assert set(moves) == {"moves", "gone", "added", "broke"}
    m = moves["moves"]
    assert m.what == "bytes" and m.categories == {"activations": (300, 0)}
    assert m.lock_ok and not m.new_ok and m.lock_error == 0 and round(m.new_error, 4) == round(-300 / 1800, 4)
    assert abs(m.share["activations"] - 300 / 1800) < 1e-9
    assert moves["gone"].what == "only-lock" and moves["added"].what == "only-new"
    assert moves["broke"].what == "status" and "ok -> failed" in moves["broke"].note
    cats = drift.category_summary(list(moves.values()))
    assert set(cats) == {"activations"} and cats["activations"][0] == 1 and cats["activations"][2] == 0
    # The two cells that moved share ckpt=True (with "added"; the unmoved gpt2 cell has it off), and llama.
    levels = drift.shared_levels(list(moves.values()), new)
    assert levels[:2] == [("ckpt", "True", 2, 3), ("family", "llama", 2, 3)]  # most concentrated first
    assert ("precision", "fp32", 2, 4) in levels  # shared too, but by the unmoved cell as well
    assert drift.shared_levels([m for m in moves.values() if m.what == "only-new"], new) == []


def test_a_second_rank_that_moves_is_reported(tmp_path):
    r = ({"params": 100}, {"params": 100})
    lock = _csv(tmp_path / "l.csv", [_cell("z2", r, r)])
    new = _csv(tmp_path / "n.csv", [_cell("z2", r, ({"params": 100, "grads": 8}, {"params": 100, "grads": 4}))])
    (m,) = drift.cell_changes(lock, new)
    assert m.categories == {"grads": (4, 8)}


def test_main_renders_and_exits_3_when_something_moved(tmp_path, capsys):
    lock_dir, new_dir = tmp_path / "lock", tmp_path / "newest"
    base = ({"params": 1000}, {"params": 1000})
    for d, cells, tests in ((lock_dir, [_cell("c", base)], {"t": "passed"}),
                            (new_dir, [_cell("c", ({"params": 1000}, {"params": 1100}))], {"t": "failed"})):  # fmt: skip
        d.mkdir()
        (d / "accuracy-ci.csv").write_text(csv_text(cells))
        _junit(d / "junit.xml", tests)
    (tmp_path / "lock.txt").write_text("transformers==5.23.0\n")
    (tmp_path / "freeze.txt").write_text("transformers==5.24.0\n")
    args = ["--lock", str(tmp_path / "lock.txt"), "--freeze", str(tmp_path / "freeze.txt"), "--lock-dir", str(lock_dir),
            "--new-dir", str(new_dir)]  # fmt: skip
    assert drift.main(args) == drift.MOVED_EXIT
    out = capsys.readouterr().out
    assert "transformers" in out and "5.23.0" in out and "5.24.0" in out
    assert "passed -> failed: tests/test_activations.py::t" in out
    assert "c: peak error +0.00% -> -9.09% now OUTSIDE the bounds" in out
    assert "params" in out and "measured moved in 1 cells" in out
    # Nothing moved: exit 0.
    (new_dir / "accuracy-ci.csv").write_text(csv_text([_cell("c", base)]))
    _junit(new_dir / "junit.xml", {"t": "passed"})
    (tmp_path / "freeze.txt").write_text("transformers==5.23.0\n")
    assert drift.main(args) == 0
    out = capsys.readouterr().out
    assert "none: the drift venv has exactly the locked versions" in out
    assert "1 cells in both runs, 1 identical byte for byte" in out and "no cell moved" in out
    assert drift.main([*args[:-1], str(tmp_path / "missing")]) == 1
