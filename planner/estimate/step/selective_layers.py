"""The simulated step under a selective checkpointing policy (specs/selective_ac.py).

- Layer policy ``"N"``: transformers' per-layer non-reentrant checkpoint on every N-th decoder layer
  (``(i + 1) % N == 0``, torchtitan's and torchtune's count) and plain layers between. The layers are no longer
  identical, so the step simulates every layer one by one (no ghost layers): the forward end and each
  layer's backward are then exact, at the cost of L layers' simulation instead of three.
- Op policy ``"op"``: every layer checkpointed as under full checkpointing, with the policy's cache written on
  the tape (sac.py): the odd-numbered mm outputs and SDPA's outputs live with the region's checkpoint frame and
  the recomputation takes them back instead of re-running those ops. Modelled for full fine-tuning and LoRA
  without ZeRO-3 and without activation offloading (``op_modelled``); otherwise the no-checkpointing step stands
  in: every tensor the policy keeps is one the plain layer's autograd saves too, and a recomputation rebuilds
  only part of what the plain layer kept, so it bounds the policy from above (``OP_NOTE``).
"""

from __future__ import annotations

from planner.estimate.step.sac import Recorder, Replayer
from planner.specs import Method
from planner.specs.selective_ac import OP, checkpointed_layers

OP_NOTE = ("--selective-ac op: with QLoRA, DeepSpeed ZeRO-3 or --activation-offload the memory shown is the step "
           "without checkpointing, an upper bound (torchtitan's op policy keeps SDPA's and every odd-numbered "
           "matmul's outputs, which planner writes on its step for full fine-tuning and LoRA only); its step time "
           "counts the recomputed matmuls and elementwise kernels.")


def step_checkpointed_layers(selective_ac: str, num_layers: int) -> tuple[int, ...]:
    """The layers the simulated step checkpoints under a layer policy (``StepInputs.ckpt_layers``)."""
    return checkpointed_layers(selective_ac, num_layers)


def num_simulated(num_layers: int, ckpt_layers: tuple[int, ...], default: int) -> int:
    """Every layer under a layer policy, else the default three (the middle one standing for the rest)."""
    return num_layers if ckpt_layers else min(num_layers, default)


def op_modelled(train) -> bool:
    """Whether the step writes the op policy's cache (sac.py): full fine-tuning and LoRA without ZeRO-3 (whose
    linear is DeepSpeed's own function) and without activation offloading; otherwise the no-checkpointing
    step stands in as the upper bound (OP_NOTE)."""
    return (train.selective_ac == OP and train.method in (Method.FULL, Method.LORA) and train.zero_stage != 3
            and not train.activation_offload)


def recorder() -> Recorder:
    return Recorder()


def replayer(held: list, sim, node) -> Replayer:
    """The recomputation's view of the region's cache; a consumed entry leaves ``node``'s saved tensors."""

    def release(st) -> None:
        for k, kept in enumerate(node.saved):
            if kept is st:
                del node.saved[k]
                st.num_saves -= 1
                if st.num_saves == 0:
                    sim.saved -= st.nbytes
                return

    return Replayer(held, release)


def notes(train) -> tuple[str, ...]:
    return (OP_NOTE,) if train.selective_ac == OP and not op_modelled(train) else ()


__all__ = ["OP_NOTE", "notes", "num_simulated", "op_modelled", "recorder", "replayer", "step_checkpointed_layers"]
