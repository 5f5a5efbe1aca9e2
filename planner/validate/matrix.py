"""The validation matrix: seeded, reproducible cells of tiny models, each one real profile plus its estimate.

A ``Cell`` is every input of one run: the model's shape (family, hidden size, layers, heads, vocabulary,
...) and the training configuration (method, precision, ZeRO stage and ranks, checkpointing, attention,
sequence length, micro-batch). Issue 5 asks for these factors and levels:

- families: Llama style with grouped-query attention, GPT-2 style with dropout (its config's 0.1 residual,
  embedding and attention dropout), Qwen2 style with QKV bias (tied embeddings, as the small Qwen2.5 models),
  and a small Mixtral-style mixture of experts (4 experts, top 2);
- methods: full, LoRA on the attention projections, LoRA on all linear layers, QLoRA nf4 with and without
  double quantization;
- ZeRO 0 on one rank; ZeRO 1, 2 and 3 on two ranks (DeepSpeed, gloo); QLoRA is not combined with stage 3
  (planner refuses it: bitsandbytes 4-bit weights are not sharded);
- checkpointing on/off, eager and SDPA attention, three sequence lengths, three micro-batches, three hidden
  sizes, two depths and four vocabularies.

``full_matrix`` crosses family x method x checkpointing on one rank (40 cells) and adds every ZeRO stage x
method on two ranks (13 cells); the remaining factors are drawn from balanced, seeded shuffles so each level
appears about equally often and no single shape dominates; ``EXTRA_CELLS`` (a tiny Qwen3-MoE with LoRA on all
linear layers, a random cell the model once missed, and three cells with torch's fused AdamW; every other cell
runs foreach AdamW) come after them without moving them. ``ci_matrix`` is the cheapest subset of it that
still covers every level of every factor, every family x method pair and checkpointing on and off for
every family and every method (a weighted greedy set cover: a
2-rank DeepSpeed cell costs about ten single-rank cells). ``random_cells`` draws shapes the matrix was not
written for.
"""

from __future__ import annotations

import random
from typing import Any

from planner.validate.cell import (  # re-exported: the validator and the tests read them from here
    ATTN_TARGETS,
    ATTNS,
    COVERED,
    DEFAULT_LOSS,
    DEFAULT_OPTIMIZER,
    DEFAULT_PEFT_DTYPE,
    DEFAULT_SEED,
    DEFAULTS_LEFT_OUT,
    EXPERTS_PER_TOKEN,
    FAMILIES,
    HEAD_DIM,
    HIDDENS,
    LATE_FIELDS,
    LAYERS,
    LORA_DROPOUT,
    LORA_RANK,
    METHODS,
    MICRO_BATCHES,
    MOE_FAMILIES,
    MULTI_RANK_COST,
    NUM_EXPERTS,
    PRECISIONS,
    SEQ_LENS,
    STEPS,
    VOCABS,
    ZERO_SETUPS,
    Cell,
)
from planner.validate.recipe_cells import (  # re-exported
    ACCUMULATION_CELLS,
    DDP_CELLS,
    DEEPSPEED_CONFIG_CELLS,
    DS_DEFAULT_BUCKETS,
    DTYPE_CELLS,
    FULL_ONLY_CELLS,
    GPU_OPTIMIZER_CELLS,
    LOSS_CELLS,
    OFFLOAD_CELLS,
    RECIPE_OPTIMIZER_CELLS,
    TRL_LOSS_CELLS,
)

__all__ = ["ACCUMULATION_CELLS", "ATTN_TARGETS", "ATTNS", "Cell", "COMPILE_CELLS", "COVERED", "DDP_CELLS", "DEEPSPEED_CONFIG_CELLS", "DEFAULT_LOSS", "DEFAULT_OPTIMIZER", "DEFAULT_PEFT_DTYPE", "DEFAULT_SEED", "DEFAULTS_LEFT_OUT", "DS_DEFAULT_BUCKETS", "DTYPE_CELLS", "EXPERTS_PER_TOKEN", "FAMILIES", "FULL_ONLY_CELLS", "GPU_OPTIMIZER_CELLS", "HEAD_DIM", "HIDDENS", "LATE_FIELDS", "LAYERS", "LORA_DROPOUT", "LORA_RANK", "LOSS_CELLS", "METHODS", "MICRO_BATCHES", "MOE_FAMILIES", "MULTI_RANK_COST", "NUM_EXPERTS", "OFFLOAD_CELLS", "PRECISIONS", "RECIPE_OPTIMIZER_CELLS", "SEQ_LENS", "STEPS", "TRL_LOSS_CELLS", "VOCABS", "ZERO_SETUPS"]


def _shape(family: str, hidden: int, layers: int, vocab: int, rng: random.Random) -> dict[str, Any]:
    heads = hidden // HEAD_DIM
    kv = heads if family == "gpt2" else 2  # grouped-query attention: 4, 6 or 8 query heads share 2 K/V heads
    if family == "gpt2":
        inter = 4 * hidden
    elif family == "mixtral":
        inter = rng.choice((hidden, 2 * hidden))  # per expert
    else:
        inter = rng.choice((2 * hidden, 3 * hidden, 8 * hidden // 3 // 8 * 8))
    return {"family": family, "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv,
            "intermediate": inter, "vocab": vocab, "num_experts": NUM_EXPERTS if family == "mixtral" else 0}  # fmt: skip


def _lora_dropout(family: str, method: str) -> float:
    """peft puts LoRA on fused 3-D expert weights with ``lora.ParamWrapper``, which refuses a LoRA dropout
    (peft/tuners/lora/layer.py): a mixture of experts with all-linear targets trains without one."""
    return 0.0 if family in MOE_FAMILIES and method != "lora-attn" and method != "full" else LORA_DROPOUT


# Cells outside the seeded design (appended to it, and always in the CI subset), so that the designed cells keep
# their ids and cached profiles: a tiny Qwen3-MoE (experts registered before the router, unlike Mixtral) with
# LoRA on all linear layers, which peft puts on the fused expert tensors and the router with lora.ParamWrapper
# (LoRA dropout 0, the only value it accepts; issue 14 item 8); and the random cell of seed 2118205620, a
# full fp32 GPT-2 whose vocabulary outweighs its layers, so the step peaks at the very end of backward, where
# autograd sums the tied embedding's two gradients out of place (tape._param_grad_arrives).
EXTRA_CELLS = (
    Cell(family="qwen3_moe", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=2, intermediate=64, vocab=512,
         method="lora-all", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=64,
         micro_batch=2, num_experts=NUM_EXPERTS, lora_dropout=_lora_dropout("qwen3_moe", "lora-all")),
    Cell(family="gpt2", hidden=48, layers=4, heads=6, kv_heads=6, intermediate=192, vocab=3957, method="full",
         precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="sdpa", seq_len=32, micro_batch=1, lora_rank=4),
)
# torch's fused AdamW (``--optimizer adamw-fused``, issue 16 item 2), appended after EXTRA_CELLS the same way: full
# bf16-mixed fine-tuning without DeepSpeed, short enough that the optimizer step is the peak (where foreach's
# copy of the second moment would be 4 bytes per parameter more: +20% of this cell's peak); LoRA on the attention
# projections (fp32 adapters: one fused step counter per adapter tensor); full bf16-mixed ZeRO-2 on two ranks,
# peaking at the step too (DeepSpeed steps the rank's flat fp32 partition with the fused kernel).
OPTIMIZER_CELLS = (
    Cell(family="llama", hidden=96, layers=2, heads=96 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=1000,
         method="full", precision="bf16-mixed", zero=0, num_ranks=1, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, optimizer="adamw-fused"),
    Cell(family="gpt2", hidden=64, layers=2, heads=64 // HEAD_DIM, kv_heads=64 // HEAD_DIM, intermediate=256,
         vocab=512, method="lora-attn", precision="fp32", zero=0, num_ranks=1, ckpt=False, attn="eager", seq_len=64,
         micro_batch=2, optimizer="adamw-fused"),
    Cell(family="qwen2", hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=2048,
         method="full", precision="bf16-mixed", zero=2, num_ranks=2, ckpt=True, attn="sdpa", seq_len=32,
         micro_batch=1, optimizer="adamw-fused"),
)
EXTRA_CELLS = EXTRA_CELLS + OPTIMIZER_CELLS
# torch.compile (``--compile``, issue 16 item 7): the estimate keeps eager's figure with a note that it is an upper
# bound (estimate/compile_note.py), so these cells are in neither the CI subset nor the full (bounded) matrix; they
# measure how far below eager's estimate inductor lands (README, torch.compile; scripts/compile_cells.py reports
# them). Full bf16-mixed Llama and full fp32 Qwen2 without checkpointing, LoRA Llama with checkpointing.
COMPILE_CELLS = tuple(
    Cell(family=family, hidden=128, layers=2, heads=128 // HEAD_DIM, kv_heads=2, intermediate=256, vocab=vocab,
         method=method, precision=precision, zero=0, num_ranks=1, ckpt=ckpt, attn="sdpa", seq_len=128,
         micro_batch=2, compile=True)
    for family, vocab, method, precision, ckpt in (("llama", 1000, "full", "bf16-mixed", False),
                                                   ("qwen2", 2048, "full", "fp32", False),
                                                   ("llama", 1000, "lora-all", "bf16-mixed", True))
)
def _balanced(levels: tuple, n: int, rng: random.Random) -> list:
    """n values cycling through the levels (each appears n/len or n/len + 1 times), shuffled."""
    values = [levels[i % len(levels)] for i in range(n)]
    rng.shuffle(values)
    return values


def _fill(skeletons: list[dict[str, Any]], rng: random.Random) -> list[Cell]:
    n = len(skeletons)
    draws = {
        "attn": _balanced(ATTNS, n, rng),
        "seq_len": _balanced(SEQ_LENS, n, rng),
        "micro_batch": _balanced(MICRO_BATCHES, n, rng),
        "hidden": _balanced(HIDDENS, n, rng),
        "layers": _balanced(LAYERS, n, rng),
        "vocab": _balanced(VOCABS, n, rng),
        "precision": _balanced(PRECISIONS, n, rng),
    }
    cells = []
    for i, sk in enumerate(skeletons):
        shape = _shape(sk["family"], draws["hidden"][i], draws["layers"][i], draws["vocab"][i], rng)
        # QLoRA computes in a 16-bit dtype (planner refuses fp32 QLoRA).
        precision = "bf16-mixed" if sk["method"].startswith("qlora") else draws["precision"][i]
        cells.append(Cell(**shape, method=sk["method"], precision=precision, zero=sk["zero"],
                          num_ranks=sk["num_ranks"], ckpt=sk["ckpt"], attn=draws["attn"][i],
                          seq_len=draws["seq_len"][i], micro_batch=draws["micro_batch"][i],
                          lora_dropout=_lora_dropout(sk["family"], sk["method"])))  # fmt: skip
    return cells


def full_matrix(seed: int = DEFAULT_SEED) -> list[Cell]:
    """The full matrix: family x method x checkpointing on one rank, ZeRO 1/2/3 x method on two ranks, EXTRA_CELLS,
    and FULL_ONLY_CELLS."""
    rng = random.Random(seed)
    single = [{"family": f, "method": m, "ckpt": c, "zero": 0, "num_ranks": 1}
              for f in FAMILIES for m in METHODS for c in (False, True)]  # fmt: skip
    multi_keys = [(z, n, m) for z, n in ZERO_SETUPS if z > 0 for m in METHODS if not (z == 3 and m.startswith("qlora"))]
    fams = _balanced(FAMILIES, len(multi_keys), rng)
    ckpts = _balanced((False, True), len(multi_keys), rng)
    multi = [{"family": f, "method": m, "ckpt": c, "zero": z, "num_ranks": n}
             for (z, n, m), f, c in zip(multi_keys, fams, ckpts, strict=True)]  # fmt: skip
    return _fill(single, rng) + _fill(multi, rng) + list(EXTRA_CELLS) + list(FULL_ONLY_CELLS)


def _requirements(cells: list[Cell]) -> set[tuple]:
    req: set[tuple] = set()
    for c in cells:
        req |= _covers(c)
    return req


def _covers(c: Cell) -> set[tuple]:
    out = {(k, getattr(c, k)) for k in COVERED}
    out.add(("family x method", c.family, c.method))
    out.add(("method x checkpointing", c.method, c.ckpt))
    out.add(("family x checkpointing", c.family, c.ckpt))
    if c.num_ranks > 1:  # every method and every stage run at least once under DeepSpeed
        out.add(("multi-rank method", c.method))
    return out


def ci_matrix(seed: int = DEFAULT_SEED) -> list[Cell]:
    """The cheapest subset of the full matrix covering every factor level and family x method pair."""
    everything = full_matrix(seed)
    cells = [c for c in everything if c not in EXTRA_CELLS and c not in FULL_ONLY_CELLS]
    todo = _requirements(cells)
    chosen: list[Cell] = list(EXTRA_CELLS)
    while todo:
        best = max(cells, key=lambda c: (len(_covers(c) & todo) / c.cost, -cells.index(c)))
        if not _covers(best) & todo:
            break
        chosen.append(best)
        todo -= _covers(best)
    order = {c: i for i, c in enumerate(everything)}
    return sorted(chosen, key=order.__getitem__)


# ---------------------------------------------------------------- random shapes


def random_cells(seed: int, n: int, *, max_ranks: int = 2) -> list[Cell]:
    """n cells with shapes the matrix was not written for (hidden, layers, heads, vocabulary, sequence).

    Heads are 2-8 of an even head dimension 8-32; grouped-query families take a divisor of the heads as K/V
    heads; vocabularies are any size 256-4096, sequences 16-160 tokens. Mixture-of-experts sizes are multiples
    of 8, as transformers' grouped_mm experts need (16-byte strides in bf16). Method, precision, checkpointing,
    attention and micro-batch are random too; ZeRO stages 1-3 (two ranks) come up in a quarter of the cells
    when ``max_ranks`` allows, the rest run on one rank.
    """
    rng = random.Random(seed)
    cells = []
    for _ in range(n):
        family = rng.choice(FAMILIES)
        heads = rng.randint(2, 8)
        head_dim = rng.choice((8, 12, 16, 24, 32))
        if family == "mixtral":  # grouped_mm's 16-byte strides (above) apply to the hidden size too
            head_dim = rng.choice((8, 16, 24, 32))
        hidden = heads * head_dim
        kv = heads if family == "gpt2" else rng.choice([k for k in range(1, heads + 1) if heads % k == 0])
        if family == "gpt2":
            inter = 4 * hidden
        elif family == "mixtral":
            # transformers' MoE experts run torch grouped_mm, which needs 16-byte row strides
            # (transformers/integrations/moe.py): expert sizes are multiples of 8 (bf16).
            inter = 8 * rng.randint(max(1, hidden // 16), hidden // 4)
        else:
            inter = rng.randint(2 * hidden, 4 * hidden)
        method = rng.choice(METHODS)
        zero, ranks = (0, 1)
        if max_ranks > 1 and rng.random() < 0.25:
            zero, ranks = rng.choice([(z, r) for z, r in ZERO_SETUPS if z > 0 and not (z == 3 and "qlora" in method)])
        precision = "bf16-mixed" if method.startswith("qlora") else rng.choice(PRECISIONS)
        cells.append(Cell(family=family, hidden=hidden, layers=rng.randint(1, 4), heads=heads, kv_heads=kv,
                          intermediate=inter, vocab=rng.randint(256, 4096), method=method, precision=precision,
                          zero=zero, num_ranks=ranks, ckpt=rng.random() < 0.5, attn=rng.choice(ATTNS),
                          seq_len=rng.randint(16, 160), micro_batch=rng.randint(1, 4),
                          lora_rank=rng.choice((2, 4, 8, 16)),
                          num_experts=rng.randint(2, 6) if family == "mixtral" else 0,
                          lora_dropout=_lora_dropout(family, method)))  # fmt: skip
    return cells
