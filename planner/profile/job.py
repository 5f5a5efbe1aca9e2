"""What one rank is handed, and the exceptions that stop its run.

``Job``: everything a rank needs to run, JSON-serialisable (the launcher hands it to torchrun workers as a file);
``Terminated``: SIGTERM as an exception the step loop handles like Ctrl-C; ``InjectedFailure``: the error
``--fail-at`` raises where it asks (failure-path testing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Job:
    """Everything a rank needs to run (JSON-serialisable, handed to torchrun workers as a file)."""

    model_name: str
    model_config: dict[str, Any]
    train: dict[str, Any]  # planner.specs.train_spec_to_dict
    num_ranks: int
    device: str  # "cpu" or "cuda" (resolved)
    steps: int
    seed: int = 0
    weights: str | None = None
    data: str | None = None
    tokenizer: str | None = None
    fail_at: str | None = None  # "RANK:STEP:PHASE": raise an injected error there (failure-path testing)
    torch_categories: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Job:
        return Job(**json.loads(text))


class Terminated(KeyboardInterrupt):
    """SIGTERM (torchrun stopping the workers) turned into an exception the step loop can handle."""


class InjectedFailure(RuntimeError):
    pass
