"""Selective activation checkpointing: torchtitan's ``activation_checkpoint.mode = "selective"`` and torchtune's
``ac_mode: selective``, stated by their ``selective_ac_option`` / ``ac_option``.

- ``"op"``: every decoder layer runs under torch's non-reentrant checkpoint with a selective-checkpointing
  context (torch/utils/checkpoint.py ``create_selective_checkpoint_contexts``) whose policy is torchtitan's
  (torchtitan/distributed/activation_checkpoint.py ``_apply_op_sac``, ``_custom_policy``): the outputs of the
  SDPA kernels and of every odd-numbered ``aten.mm`` of the layer (the count restarts with each layer's
  region) are kept (MUST_SAVE); every other op, the even-numbered mms included, is recomputed in backward.
- ``"N"`` (a positive integer): every N-th decoder layer is checkpointed in full and the others keep their
  activations (torchtitan ``_apply_layer_sac``: a running count from 1, layer ``count % N == 0``; torchtune
  training/activations.py ``checkpoint_wrapper`` counts the same way).

``""``: no selective policy (``grad_checkpointing`` says whether every layer is checkpointed, torchtitan's
``mode = "full"``). The two are exclusive, as torchtitan's one ``mode`` field makes them.
"""

from __future__ import annotations

from planner.errors import PlannerError

OP = "op"
SELECTIVE_AC_HELP = ("Selective activation checkpointing as torchtitan's selective_ac_option: 'op' (save SDPA and every "
                     "odd-numbered matmul of each layer, recompute the rest) or N (checkpoint every N-th layer); "
                     "exclusive with --grad-checkpointing (default: off).")


def check_selective_ac(value: str, grad_checkpointing: bool, uses_fsdp2: bool = False) -> None:
    """One sentence for a value torchtitan would refuse or one planner states otherwise."""
    if not isinstance(value, str):
        raise PlannerError(f"selective_ac must be a string ('', 'op' or a positive integer), got {value!r}.")
    if value == "":
        return
    if value != OP and not (value.isdigit() and int(value) >= 1):
        raise PlannerError(f"--selective-ac must be 'op' or a positive integer N (every N-th layer), got {value!r}.")
    if grad_checkpointing:
        raise PlannerError("--selective-ac and --grad-checkpointing are exclusive (torchtitan's mode is 'selective' "
                           "or 'full'); use one of them.")
    if uses_fsdp2 and value != OP:
        raise PlannerError("--selective-ac N with FSDP2 is not modelled yet (FSDP2's gathers around a checkpointed "
                           "layer's recomputation are modelled for every layer or none); use --grad-checkpointing, "
                           "--selective-ac op, or DeepSpeed.")


def layer_every(value: str) -> int | None:
    """N of the layer policy (``"1"`` checkpoints every layer); None for ``""`` and ``"op"``."""
    return int(value) if value.isdigit() else None


def checkpointed_layers(value: str, num_layers: int) -> tuple[int, ...]:
    """0-based indices of the decoder layers the layer policy checkpoints: torchtitan's and torchtune's running
    count starts at 1, so layer ``i`` is checkpointed when ``(i + 1) % N == 0``."""
    every = layer_every(value)
    if every is None:
        return ()
    return tuple(i for i in range(num_layers) if (i + 1) % every == 0)


def normalise(value: object) -> str:
    """A config's ``selective_ac_option`` / ``ac_option`` (str or int) as the spec's string."""
    if value is None:
        return ""
    return str(value).strip().lower()


__all__ = ["OP", "SELECTIVE_AC_HELP", "check_selective_ac", "checkpointed_layers", "layer_every", "normalise"]
