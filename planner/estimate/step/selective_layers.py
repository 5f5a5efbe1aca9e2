"""The simulated step under a selective checkpointing policy (specs/selective_ac.py).

- Layer policy ``"N"``: transformers' per-layer non-reentrant checkpoint on every N-th decoder layer
  (``(i + 1) % N == 0``, torchtitan's and torchtune's count) and plain layers between. The layers are no longer
  identical, so the step simulates every layer one by one (no ghost layers): the forward end and each
  layer's backward are then exact, at the cost of L layers' simulation instead of three.
- Op policy ``"op"``: the step is the no-checkpointing step. Every tensor the policy keeps (SDPA's outputs,
  the odd-numbered mm outputs) is one the plain layer's autograd saves too, and a layer's recomputation in
  backward rebuilds only part of what the plain layer kept, so the no-checkpointing activations bound it from
  above; what the policy saves exactly is not written on the tape yet (``OP_NOTE``).
"""

from __future__ import annotations

from planner.specs.selective_ac import OP, checkpointed_layers

OP_NOTE = ("--selective-ac op: the memory shown is the step without checkpointing, an upper bound (torchtitan's "
           "op policy saves SDPA's and every odd-numbered matmul's outputs and recomputes the rest; which of "
           "them stay alive is not modelled yet); its step time counts the recomputed matmuls and elementwise "
           "kernels.")


def step_checkpointed_layers(selective_ac: str, num_layers: int) -> tuple[int, ...]:
    """The layers the simulated step checkpoints under a layer policy (``StepInputs.ckpt_layers``)."""
    return checkpointed_layers(selective_ac, num_layers)


def num_simulated(num_layers: int, ckpt_layers: tuple[int, ...], default: int) -> int:
    """Every layer under a layer policy, else the default three (the middle one standing for the rest)."""
    return num_layers if ckpt_layers else min(num_layers, default)


def notes(selective_ac: str) -> tuple[str, ...]:
    return (OP_NOTE,) if selective_ac == OP else ()


__all__ = ["OP_NOTE", "notes", "num_simulated", "step_checkpointed_layers"]
