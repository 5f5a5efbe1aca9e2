"""torchtitan's op policy on the simulated step (``--selective-ac op``; torch/utils/checkpoint.py
``create_selective_checkpoint_contexts``): which op outputs a checkpointed layer keeps, and their reuse.

In the layer's forward (``_CachingTorchDispatchMode``) a MUST_SAVE op's outputs are stored in the region's
storage: the odd-numbered ``aten.mm`` of the region (a linear without a bias on the tape: F.linear lowers to
mm; with one to addmm, which the policy recomputes) and the SDPA kernel's outputs (its output and fp32
logsumexp). In the recomputation (``_CachedTorchDispatchMode``) such an op returns its stored outputs instead of
running, and the entry becomes ``_CONSUMED`` (the storage lets go of it); an entry the recomputation never
reaches (its early stop: nothing after it is saved, e.g. down_proj's output) stays until the region is gone.
On the tape: ``Recorder`` holds the outputs on the region's first node (its saved tensors live as long as the
region's checkpoint frame), ``Replayer`` hands each back as the recomputed op's output storage and drops the
hold. The recomputed SDPA allocates its logsumexp before the cached pair is found (sdpa_core), so the
forward's is freed there: b x heads x s fp32 values held twice for one op.
"""

from __future__ import annotations

MM, SDPA = "mm", "sdpa"


def kind(name: str, inputs: list) -> str:
    """The aten op a tape op is, for the policy: ``mm`` (linear without a bias), ``sdpa``, or ``""``."""
    if name == "linear" and len(inputs) == 2:
        return MM
    if name == "sdpa":
        return SDPA
    return ""


class Recorder:
    """The forward of one checkpointed layer: the outputs the policy keeps, in call order."""

    def __init__(self) -> None:
        self.num_mm = 0
        self.held: list = []  # per kept op: its output storages

    def keeps(self, name: str, inputs: list) -> bool:
        k = kind(name, inputs)
        if k == MM:
            self.num_mm += 1
            return self.num_mm % 2 == 1
        return k == SDPA

    def after(self, name: str, inputs: list, saved: list, outs: list) -> None:
        if not self.keeps(name, inputs):
            return
        sts = [o.st for o in outs]
        if name == "sdpa":  # the kernel's second output, the fp32 logsumexp, made before the op (sdpa_core)
            ins = {id(getattr(i, "st", None)) for i in inputs}
            sts += [s.st for s in saved if getattr(s, "st", None) is not None and id(s.st) not in ins
                    and s.st.nbytes and s.dtype == "fp32" and len(s.shape) == 3]
        self.held.append(sts)


class Replayer:
    """The recomputation: the kept ops take their stored outputs back, in the same order."""

    def __init__(self, held: list, release) -> None:
        self.num_mm = 0
        self.held = list(held)
        self.release = release  # drops the region's hold on a storage (the entry is _CONSUMED)

    def alias(self, name: str, inputs: list):
        k = kind(name, inputs)
        if k == MM:
            self.num_mm += 1
            keep = self.num_mm % 2 == 1
        else:
            keep = k == SDPA
        if not keep or not self.held:
            return None
        sts = self.held.pop(0)
        for st in sts:
            self.release(st)
        return sts[0]


__all__ = ["Recorder", "Replayer", "kind"]
