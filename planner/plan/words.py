"""How the recommender's advice names a plan: its method (``METHOD_WORDS``) and its layout (``layout_words``).

Shared by ``advice`` (why the plan won, why each runner-up lost) and ``no_fit`` (what would fit).
"""

from __future__ import annotations

from planner.plan.search import Layout
from planner.specs import Method, Offload

METHOD_WORDS = {Method.FULL: "full fine-tuning", Method.LORA: "LoRA", Method.QLORA: "QLoRA"}


def layout_of(plan) -> Layout:
    t = plan.train
    return Layout(t.method, t.zero_stage, t.offload, t.grad_checkpointing, t.attn_impl)


def layout_words(lay: Layout) -> str:
    off = "" if lay.offload is Offload.NONE else f" + {lay.offload.value} offload"
    ck = "checkpointing on" if lay.grad_checkpointing else "checkpointing off"
    return f"{METHOD_WORDS[lay.method]}, ZeRO-{lay.zero_stage}{off}, {ck}, {lay.attn_impl.value}"
