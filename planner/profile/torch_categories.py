"""A cross-check: torch's own categorisation of a CPU profile (``torch.profiler._memory_profiler``).

That module is private and deprecated upstream, so it is used only here, only when asked for
(``--torch-categories``), and planner's identity-based attribution never depends on it. It needs the
profiler to run with ``record_shapes=True, with_stack=True`` (slower). Its categories are mapped onto
planner's: PARAMETER -> params, GRADIENT -> grads, OPTIMIZER_STATE -> optimizer_states, ACTIVATION ->
activations, TEMPORARY and AUTOGRAD_DETAIL -> temporaries, INPUT and unknown -> other.
"""

from __future__ import annotations

from typing import Any

TORCH_TO_PLANNER = {
    "PARAMETER": "params",
    "GRADIENT": "grads",
    "OPTIMIZER_STATE": "optimizer_states",
    "ACTIVATION": "activations",
    "TEMPORARY": "temporaries",
    "AUTOGRAD_DETAIL": "temporaries",
    "INPUT": "other",
    None: "other",
}


def categorise_at(prof: Any, t_abs_ns: int) -> dict[str, Any]:
    """Bytes alive at ``t_abs_ns`` (profiler clock) per torch category and per planner category (CPU)."""
    from torch.profiler._memory_profiler import Action

    mp = prof._memory_profile()
    categories = mp._categories
    by_torch: dict[str, int] = {}

    def add(key, version, nbytes: int) -> None:
        cat = categories.get(key, version)
        name = cat.name if cat is not None else None
        by_torch[name] = by_torch.get(name, 0) + nbytes

    for t, action, (key, version), nbytes in mp.timeline:
        if key.device.type != "cpu":
            continue
        if t != -1 and t > t_abs_ns:
            break
        if action in (Action.PREEXISTING, Action.CREATE):
            add(key, version, nbytes)
        elif action == Action.INCREMENT_VERSION:
            add(key, version, -nbytes)
            add(key, version + 1, nbytes)
        elif action == Action.DESTROY:
            add(key, version, -nbytes)
    by_planner: dict[str, int] = {}
    for name, nbytes in by_torch.items():
        p = TORCH_TO_PLANNER.get(name, "other")
        by_planner[p] = by_planner.get(p, 0) + nbytes
    return {
        "at_t_ns": t_abs_ns,
        "by_torch_category": {str(k): v for k, v in sorted(by_torch.items(), key=lambda kv: str(kv[0]))},
        "by_category": dict(sorted(by_planner.items())),
    }
