"""What a plan search returns: the orders it prefers, a runner-up, a rejected plan, the recommendation, and the
error when nothing fits. (``Plan`` itself is a spec: planner/specs/plan.py.)"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import PlannerError
from planner.estimate.result import Estimate
from planner.specs import AttnImpl, Method, Offload, Plan

METHOD_PREFERENCE = (Method.FULL, Method.LORA, Method.QLORA)
OFFLOAD_ORDER = (Offload.NONE, Offload.OPTIMIZER, Offload.OPTIMIZER_PARAMS)
# sdpa first on ties: it needs no extra package and dispatches to FlashAttention-2 kernels in torch on
# Ampere and newer; eager materialises the s x s scores and is never preferred.
ATTN_ORDER = (AttnImpl.SDPA, AttnImpl.FLASH_ATTENTION_2, AttnImpl.EAGER)


@dataclass(frozen=True)
class Alternative:
    """A plan that fits but ranked below the chosen one, and why."""

    plan: Plan
    estimate: Estimate  # with throughput
    reason: str


@dataclass(frozen=True)
class Rejected:
    """A plan that was not kept, and the reason (memory, preference, hardware, divisibility)."""

    plan: Plan | None
    reason: str
    estimate: Estimate | None = None


@dataclass(frozen=True)
class Recommendation:
    plan: Plan
    estimate: Estimate  # the chosen plan's estimate, throughput filled
    why: tuple[str, ...]
    runners_up: tuple[Alternative, ...]
    rejected: tuple[Rejected, ...]
    margin: float
    mfu: float
    num_tokens: int
    price_per_gpu_hour: float
    num_estimates: int  # estimator calls the search made (bounded work)

    def to_dict(self) -> dict:
        def est_dict(e: Estimate | None):
            return None if e is None else e.row()

        return {
            "plan": self.plan.to_dict(),
            "estimate": est_dict(self.estimate),
            "why": list(self.why),
            "runners_up": [
                {"plan": a.plan.to_dict(), "estimate": est_dict(a.estimate), "reason": a.reason}
                for a in self.runners_up
            ],
            "rejected": [
                {"plan": r.plan.to_dict() if r.plan else None, "estimate": est_dict(r.estimate), "reason": r.reason}
                for r in self.rejected
            ],
            "assumptions": {
                "margin": self.margin,
                "mfu": self.mfu,
                "num_tokens": self.num_tokens,
                "price_per_gpu_hour": self.price_per_gpu_hour,
            },
            "num_estimates": self.num_estimates,
        }


class NoPlanFits(PlannerError):
    """No candidate fits: the message is one sentence; ``suggestions`` say what would, with numbers."""

    def __init__(self, message: str, suggestions: tuple[str, ...], rejected: tuple[Rejected, ...]) -> None:
        super().__init__(message)
        self.suggestions = suggestions
        self.rejected = rejected

    def to_dict(self) -> dict:
        return {
            "error": str(self),
            "suggestions": list(self.suggestions),
            "rejected": [
                {"plan": r.plan.to_dict() if r.plan else None, "reason": r.reason,
                 "estimate": r.estimate.row() if r.estimate else None}
                for r in self.rejected
            ],
        }
