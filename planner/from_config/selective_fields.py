"""torchtune's selective activation checkpointing fields as planner's checkpointing (``--grad-checkpointing``,
``--selective-ac``).

torchtune 0.6.1 recipes/full_finetune_distributed.py ``_setup_model``: ``ac_mode`` and ``ac_option`` apply only
when ``enable_activation_checkpointing`` is false (``if (not enable_activation_checkpointing) and (ac_mode is not
None)``); then training/activations.py ``apply_selective_activation_checkpointing`` wraps the layers:
``ac_mode: full`` every layer; ``ac_mode: selective`` every ``ac_option``-th layer (``int(ac_option)``; 0
checkpoints every layer); any other mode wraps nothing. ``ac_option: op`` fails there (``int('op')``):
torchtune implements only the layer option.
"""

from __future__ import annotations

from planner.from_config.reader import Reader


def torchtune_checkpointing(r: Reader) -> tuple[bool, str]:
    """(grad_checkpointing, selective_ac) of a torchtune config."""
    enabled = bool(r.flag("enable_activation_checkpointing", False))
    mode = r.text("ac_mode")
    option = r.get("ac_option")
    if enabled or mode is None:
        if mode is not None:
            r.notes.append(f"ac_mode: {mode} is ignored: torchtune applies it only when "
                           "enable_activation_checkpointing is false (every layer is checkpointed).")
        return enabled, ""
    if mode == "full":
        return True, ""
    if mode != "selective":
        return False, ""
    if isinstance(option, bool) or not isinstance(option, (int, str)) or not str(option).strip().isdigit():
        r.refuse(f"ac_option: {option}", "is not a layer frequency; torchtune 0.6.1's selective checkpointing "
                                         "takes an integer N (every N-th layer) and fails on 'op'.")
    every = int(str(option).strip())
    if every in (0, 1):
        return True, ""
    return False, str(every)


__all__ = ["torchtune_checkpointing"]
