"""How the recommender's advice names a plan: its method (``METHOD_WORDS``) and its layout (``layout_words``).

Shared by ``advice`` (why the plan won, why each runner-up lost) and ``no_fit`` (what would fit).
"""

from __future__ import annotations

from planner.plan import search
from planner.plan.search import Layout
from planner.specs import Method, Offload

METHOD_WORDS = {Method.FULL: "full fine-tuning", Method.LORA: "LoRA", Method.QLORA: "QLoRA"}


def layout_of(plan) -> Layout:
    return search.layout_of(plan.train)


def layout_words(lay: Layout) -> str:
    off = "" if lay.offload is Offload.NONE else f" + {lay.offload.value} offload"
    ck = "checkpointing on" if lay.grad_checkpointing else "checkpointing off"
    if lay.fsdp is not None:
        engine = "FSDP2" + ("" if lay.fsdp.reshard_after_forward else " without resharding") + \
            (" + CPU offload" if lay.fsdp.cpu_offload else "")
    else:
        engine = f"ZeRO-{lay.zero_stage}{off}"
    return f"{METHOD_WORDS[lay.method]}, {engine}, {ck}, {lay.attn_impl.value}"
