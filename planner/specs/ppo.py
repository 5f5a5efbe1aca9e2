"""PPO's settings (``--task ppo``), TRL 1.12's ``PPOConfig`` (trl/experimental/ppo/ppo_config.py), validated here.

TRL 1.12.0 is the last release with a PPOTrainer (``trl.experimental.ppo``; 1.13 removed it, huggingface/trl pull
request 7020); the installed TRL 1.16 has none, so PPO is modelled from 1.12's source and not profiled.

- ``response_len`` (``response_length``, default 53): the generated tokens; ``--seq-len`` is the query plus the
  response (``batch_generation`` returns ``torch.cat((queries, sequences[:, context_length:]))``).
- ``num_ppo_epochs`` (default 4) and ``num_mini_batches`` (default 1): ``PPOTrainer.__init__`` sets
  ``local_batch_size = per_device_train_batch_size x gradient_accumulation_steps`` (the rollout batch of a rank)
  and ``local_mini_batch_size = local_batch_size / num_mini_batches`` (``exact_div``: a whole number); ``train()``
  runs ``num_ppo_epochs x num_mini_batches`` optimizer steps on the rollout, each over micro-batches of
  ``per_device_train_batch_size`` rows. The epochs change no tensor of a step (time only).
- ``rollout_batch`` (``local_rollout_forward_batch_size``, default 64): the rows ``batch_generation`` generates
  at once and the rows each no-grad scoring forward (reference, value, reward) runs on.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import PlannerError

# trl/experimental/ppo/ppo_config.py (TRL 1.12.0) PPOConfig field defaults
DEFAULT_RESPONSE_LEN = 53
DEFAULT_NUM_PPO_EPOCHS = 4
DEFAULT_NUM_MINI_BATCHES = 1
DEFAULT_ROLLOUT_BATCH = 64
TRL_PPO_RELEASE = "1.12"


def _positive(value, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlannerError(f"{flag} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class PpoSpec:
    response_len: int = DEFAULT_RESPONSE_LEN
    num_ppo_epochs: int = DEFAULT_NUM_PPO_EPOCHS
    num_mini_batches: int = DEFAULT_NUM_MINI_BATCHES
    rollout_batch: int = DEFAULT_ROLLOUT_BATCH

    def __post_init__(self) -> None:
        _positive(self.response_len, "--response-len")
        _positive(self.num_ppo_epochs, "--num-ppo-epochs")
        _positive(self.num_mini_batches, "--num-mini-batches")
        _positive(self.rollout_batch, "--rollout-batch")

    def check_run(self, micro_batch: int, grad_accum: int) -> None:
        """PPOTrainer.__init__: ``local_batch_size`` must split into ``num_mini_batches`` whole mini-batches (checked
        by the estimator, as GRPO's groups are, so the fit search skips a micro-batch that breaks it)."""
        local = micro_batch * grad_accum
        if local % self.num_mini_batches:
            raise PlannerError(f"TRL's rollout batch per rank (--micro-batch x --grad-accum = {local}) must be a "
                               f"multiple of --num-mini-batches {self.num_mini_batches}.")

    def to_dict(self) -> dict:
        return {"response_len": self.response_len, "num_ppo_epochs": self.num_ppo_epochs,
                "num_mini_batches": self.num_mini_batches, "rollout_batch": self.rollout_batch}

    @classmethod
    def from_dict(cls, d: dict) -> PpoSpec:
        try:
            return cls(response_len=d["response_len"], num_ppo_epochs=d["num_ppo_epochs"],
                       num_mini_batches=d["num_mini_batches"], rollout_batch=d["rollout_batch"])
        except (KeyError, TypeError):
            raise PlannerError(f"the training specification's ppo block is malformed: {d!r}.") from None


def check_train(train) -> None:
    """What --task ppo is modelled with, beside TrainSpec._check_task's post-training refusals (``train``: the
    TrainSpec being validated)."""
    ppo = train.task.ppo
    if ppo.response_len >= train.seq_len:
        raise PlannerError(f"--seq-len {train.seq_len} is the query plus the response: it must exceed "
                           f"--response-len {ppo.response_len}.")
    if train.optimizer.value not in ("adamw", "adamw-fused"):
        raise PlannerError(f"--task ppo with --optimizer {train.optimizer.value} is not modelled: the value model "
                           "shares the policy's optimizer (PolicyAndValueWrapper), modelled for adamw and "
                           "adamw-fused.")
    if train.selective_ac or train.compile:
        raise PlannerError("--task ppo runs TRL's PolicyAndValueWrapper, which checkpoints the policy's layers "
                           "only with --grad-checkpointing; --selective-ac and --compile do not apply.")
