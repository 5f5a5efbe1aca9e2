"""A tiny Llama-style model, its plan and an offline tokenizer, for the bundle tests (test_emit, e2e)."""

from __future__ import annotations

import json
from pathlib import Path

from planner import catalog
from planner.estimate.core import estimate
from planner.models import spec_from_config
from planner.specs import Cluster, Method, ModelSpec, Offload, Parallelism, Precision, TrainSpec

DATA = Path(__file__).resolve().parent / "data" / "tiny.jsonl"

# A few hundred thousand parameters: 2 layers, hidden 128, grouped-query attention (4 heads, 2 KV heads).
# vocab_size 320 covers the test tokenizer (about 80 words) and the byte tokenizer (257 ids).
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 128,
    "intermediate_size": 256,
    "max_position_embeddings": 256,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "vocab_size": 320,
}


def tiny_model(source: str = "tiny-llama/config.json") -> ModelSpec:
    return spec_from_config(dict(TINY_LLAMA), "tiny-llama", source)


def tiny_plan(
    *,
    method: str = "full",
    zero: int = 0,
    num_gpus: int = 1,
    num_nodes: int = 1,
    precision: str = "fp32",
    micro_batch: int = 2,
    grad_accum: int = 1,
    seq_len: int = 32,
    checkpointing: bool = True,
    offload: str = "none",
    model: ModelSpec | None = None,
    activation_offload: bool = False,
    deepspeed_stage0: bool = False,
):
    """(model, train, cluster, estimate, global batch size) of one tiny plan (``deepspeed_stage0``: zero 0 on
    DeepSpeed's engine)."""
    model = model or tiny_model()
    train = TrainSpec(
        method=Method(method),
        precision=Precision(precision),
        parallelism=Parallelism.from_zero(zero, Offload(offload), deepspeed_stage0=deepspeed_stage0),
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        seq_len=seq_len,
        grad_checkpointing=checkpointing,
        activation_offload=activation_offload,
    )
    cluster = Cluster(gpu=catalog.gpu(catalog.DEFAULT_GPU), num_gpus=num_gpus, num_nodes=num_nodes)
    return model, train, cluster, estimate(model, train, cluster), micro_batch * grad_accum * num_gpus


def build_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer trained on tests/data/tiny.jsonl, saved where AutoTokenizer loads it offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    fast.save_pretrained(str(directory))
    return directory
