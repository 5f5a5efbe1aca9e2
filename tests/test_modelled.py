"""What the estimator says it modelled (issue 13): the `modelled` block and the release note."""

from __future__ import annotations

import json

from planner.modelled import LIBRARIES, minor, modelled_block, version_notes


def test_minor_parses_release_strings():
    assert minor("5.24.0") == "5.24" and minor("2.13.0+cpu") == "2.13" and minor("0.19.8") == "0.19"
    assert minor("1.0rc1") == "1.0" and minor(None) is None and minor("dev") is None


def test_one_note_per_library_off_the_modelled_releases():
    same = {name: releases[-1] + ".0" for name, releases in LIBRARIES.items()}
    assert version_notes(same) == []
    newer = dict(same, transformers="5.99.1")
    notes = version_notes(newer)
    assert len(notes) == 1 and "transformers 5.99.1" in notes[0] and LIBRARIES["transformers"][-1] in notes[0]
    assert version_notes(dict(same, deepspeed=None)) == []  # not installed: nothing to say
    # transformers 5.24 allocates like 5.23 (checked byte for byte): no note for either
    assert version_notes(dict(same, transformers="5.23.0")) == version_notes(dict(same, transformers="5.24.0")) == []


def test_block_lists_versions_device_and_what_was_measured():
    block = modelled_block("cuda")
    assert set(block["libraries"]) == set(LIBRARIES) and set(block["installed"]) == set(LIBRARIES)
    assert block["device"] == "cuda" and any("oneDNN" in m for m in block["measured_on"])
    assert any("not yet calibrated" in n for n in block["notes"])
    assert not any("calibrated" in n for n in modelled_block("cpu")["notes"])


def test_estimate_json_carries_the_block(cli):
    out = cli("estimate", "--model", "llama-3.2-1b", "--gpus", "1", "--method", "lora", "--zero", "0", "--offload",
              "none", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["modelled"]["libraries"]["transformers"] == list(LIBRARIES["transformers"])
