"""sample.jsonl: a small generated dataset every bundle ships, so its documented smoke run has data.

``./launch.sh --max-steps 2 --dataset sample.jsonl`` checks the bundle (weights, configs, launcher, memory at
the planned shape) before the user's own ``data.jsonl`` is in place. The texts are plain English sentences
built deterministically from fixed word lists: any tokenizer (and train.py's byte tokenizer) reads them, and
the same plan always writes the same file. train.py repeats a dataset shorter than one optimizer step.
"""

from __future__ import annotations

import json

SAMPLE_DATASET = "sample.jsonl"
SAMPLE_ROWS = 96

_SUBJECTS = (
    "The planner", "A small model", "The training run", "Every rank", "The optimizer", "A careful engineer",
    "The scheduler", "The data loader", "A long sequence", "The gradient", "The checkpoint", "This smoke test",
)
_VERBS = (
    "measures", "checks", "writes", "reads", "counts", "compares", "keeps", "frees", "gathers", "reduces",
    "saves", "loads", "splits",
)
_OBJECTS = (
    "the memory of every layer", "a batch of short texts", "the peak of the backward pass", "the optimizer states",
    "the activations of one micro-batch", "a shard of the parameters", "the loss after each step",
    "the tokens of this sample", "a copy of the weights", "the plan written by planner", "the time of one step",
)
_ENDINGS = (
    "before the next step begins", "while the GPUs wait", "so that nothing runs out of memory",
    "and reports what it found", "on every node of the cluster", "without downloading anything",
    "exactly as the plan says", "and then moves on",
)


def sample_texts(num_rows: int = SAMPLE_ROWS) -> list[str]:
    """``num_rows`` texts of two or three sentences each; deterministic."""
    texts = []
    for i in range(num_rows):
        sentences = []
        for j in range(2 + i % 2):
            k = 7 * i + 3 * j
            sentences.append(
                f"{_SUBJECTS[k % len(_SUBJECTS)]} {_VERBS[(k // 2) % len(_VERBS)]} "
                f"{_OBJECTS[(k + j) % len(_OBJECTS)]} {_ENDINGS[(i + 5 * j) % len(_ENDINGS)]}."
            )
        texts.append(f"Sample {i + 1}. " + " ".join(sentences))
    return texts


def render_sample_jsonl(num_rows: int = SAMPLE_ROWS) -> str:
    """sample.jsonl: one ``{"text": ...}`` object per line."""
    return "".join(json.dumps({"text": t}) + "\n" for t in sample_texts(num_rows))
