"""--task ppo's options (``PpoSpec``'s flags, specs/ppo.py) and their one reading, beside options.py's
``TrainingFlags``, which declares them with the defaults below."""

from __future__ import annotations

from typing import Annotated

import typer

from planner.cli.task_flags import for_task
from planner.specs import PpoSpec, Task
from planner.specs.ppo import (  # noqa: F401 (TrainingFlags' defaults)
    DEFAULT_NUM_MINI_BATCHES,
    DEFAULT_NUM_PPO_EPOCHS,
    DEFAULT_RESPONSE_LEN,
    DEFAULT_ROLLOUT_BATCH,
)

ResponseLenOpt = Annotated[int, typer.Option(
    "--response-len", help="ppo: the generated response's tokens (PPOConfig.response_length) of each --seq-len row, "
    "the rest being the query. Default: 53.")]
NumPpoEpochsOpt = Annotated[int, typer.Option(
    "--num-ppo-epochs", help="ppo: PPO epochs over each rollout (PPOConfig.num_ppo_epochs; time only). Default: 4.")]
NumMiniBatchesOpt = Annotated[int, typer.Option(
    "--num-mini-batches", help="ppo: mini-batches per rollout (PPOConfig.num_mini_batches); the rollout per rank, "
    "--micro-batch x --grad-accum, must split into them. Default: 1.")]
RolloutBatchOpt = Annotated[int, typer.Option(
    "--rollout-batch", help="ppo: rows generated and scored at once (PPOConfig.local_rollout_forward_batch_size). "
    "Default: 64.")]

_PPO_FLAGS = ("response_len", "num_ppo_epochs", "num_mini_batches", "rollout_batch")


def ppo_spec(f) -> PpoSpec | None:
    """--task ppo's settings (specs/ppo.py); a PPO flag typed with another task is refused in one sentence."""
    if not for_task(f, Task.PPO, _PPO_FLAGS):
        return None
    return PpoSpec(response_len=f.response_len, num_ppo_epochs=f.num_ppo_epochs,
                   num_mini_batches=f.num_mini_batches, rollout_batch=f.rollout_batch)
