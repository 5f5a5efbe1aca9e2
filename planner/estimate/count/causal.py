"""Which models planner estimates: causal (decoder-only) language models; encoders, encoder-decoders and
classifier heads are refused in one sentence, before anything is counted (params.count_params, and `planner
profile` before it starts a run)."""

from __future__ import annotations

from planner.errors import PlannerError
from planner.specs import ModelSpec

# transformers model types that are encoders (masked LM) unless their config sets is_decoder (BertLMHeadModel).
ENCODER_TYPES = frozenset((
    "albert", "bert", "big_bird", "camembert", "canine", "convbert", "data2vec-text", "deberta", "deberta-v2",
    "distilbert", "electra", "ernie", "esm", "flaubert", "funnel", "ibert", "layoutlm", "layoutlmv2", "layoutlmv3",
    "lilt", "longformer", "luke", "markuplm", "megatron-bert", "mobilebert", "modernbert", "mpnet", "mra",
    "nezha", "nomic_bert", "nystromformer", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer",
    "splinter", "squeezebert", "tapas", "xlm", "xlm-roberta", "xlm-roberta-xl", "xmod", "yoso",
))  # fmt: skip
ENCODER_DECODER_TYPES = frozenset((
    "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "encoder-decoder", "fsmt", "led", "longt5",
    "m2m_100", "marian", "mbart", "mt5", "mvp", "nllb-moe", "pegasus", "pegasus_x", "plbart", "prophetnet",
    "seamless_m4t", "speech-encoder-decoder", "switch_transformers", "t5", "umt5", "vision-encoder-decoder",
    "whisper", "xlm-prophetnet",
))  # fmt: skip
# Heads of the `architectures` entry that are not a causal language model.
_NON_CAUSAL_HEADS = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                     "ForMultipleChoice", "ForPreTraining", "ForNextSentencePrediction", "ForCTC",
                     "ForImageClassification", "ForAudioClassification", "EncoderModel")  # fmt: skip
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")

def refuse_non_causal(model: ModelSpec) -> None:
    """Refuse, in one sentence, a model that is not a causal (decoder-only) language model: planner estimates
    next-token training, whose memory (causal attention, the [tokens, vocabulary] logits and loss) does not
    describe masked-LM, classifier or encoder-decoder training."""
    cfg = model.config or {}
    mt = model.model_type
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    what = None
    if cfg.get("is_encoder_decoder") is True or mt in ENCODER_DECODER_TYPES:
        what = "an encoder-decoder model (or one half of it)"
    elif mt in ENCODER_TYPES and cfg.get("is_decoder") is not True:
        what = "a bidirectional encoder (masked-LM) model"
    elif archs and not any(a.endswith(_CAUSAL_HEADS) for a in archs) and all(
            any(h in a for h in _NON_CAUSAL_HEADS) for a in archs):
        what = "not a causal language model (by its architectures)"
    if what:
        raise PlannerError(
            f"model {model.name!r} ({', '.join([mt, *archs])}) is {what}, and planner estimates only causal "
            "language-model training of decoder-only transformers (llama, mistral, qwen, gemma, phi, gpt2, "
            "gpt_neox, falcon, MoE)."
        )
