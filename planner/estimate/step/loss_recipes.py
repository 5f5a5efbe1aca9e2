"""The loss recipes beside transformers' standard one (logits.py): what each allocates, written on the tape.

**chunked-ce** follows torchtune 0.6.1. ``TransformerDecoder.chunked_output`` (torchtune/modules/transformer.py)
applies the output projection per chunk of the sequence, in the model's forward::

    [self.output(chunk) for chunk in last_hidden_state.chunk(self.num_output_chunks, dim=1)]

so every chunk's logits exist at the end of the forward (together the full [b, s, V] in the activation dtype).
The recipe shifts the labels (``torch.hstack((labels[..., 1:], ignore_labels_cache[:b]))``, recipes/
full_finetune_single_device.py) and calls ``CEWithChunkedOutputLoss.forward`` (torchtune/modules/loss/
ce_chunked_output_loss.py)::

    total_elements = (labels != self.ignore_index).sum()
    labels = [target_chunk.reshape(-1) for target_chunk in labels.chunk(self.num_output_chunks, dim=1)]
    logits = [logit_chunk.reshape(-1, logit_chunk.size(-1)) for logit_chunk in logits]
    for logits_chunk, labels_chunk in zip(logits, labels):
        total_loss += F.cross_entropy(logits_chunk.float(), labels_chunk, ignore_index=..., reduction="sum")
    return total_loss / total_elements

Each chunk's fp32 copy lives only while its own cross-entropy runs; log_softmax still saves each chunk's fp32
output, so after the forward the log-probabilities of every chunk (4 bytes per logit) are saved, as with the
standard loss. Backward runs every chunk's loss backward first (those nodes were created after every output
projection: the autograd engine runs the highest sequence number first), each making the chunk's two fp32
gradients and then its 16-bit gradient, which waits for the chunk's projection: the fp32 gradients exist for one
chunk at a time. With b > 1 a chunk of [b, s, h] along the sequence is not contiguous, and ``F.linear`` (no bias:
``at::matmul``) folds it with ``reshape``, a copy that mm saves when the weight is trainable.

**fused-linear-ce** follows Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction`` (liger_kernel/ops/
fused_linear_cross_entropy.py ``fused_linear_cross_entropy_forward``), called by its transformers integration
(liger_kernel/transformers/model/loss_utils.py ``LigerForCausalLMLoss``: labels padded and shifted as
transformers does, ``hidden_states.view(-1, H)``, ``lm_head.weight`` passed directly). The forward computes the
gradients: ``grad_input = zeros_like(_input)`` ([BT, H]), ``grad_weight = zeros_like(weight)`` when the weight is
trainable (its own dtype: ``accum_dtype`` None), ``loss_1d`` (fp32 [BT]) and one chunk of logits at a time,
``[chunk_size, V]`` in the input dtype (``logits_storage`` on CUDA), the cross-entropy kernel writing the
chunk's gradient into it in place; ``chunk_size = next_power_of_2(cdiv(BT, cdiv(V, H)))``, at most BT. It saves
grad_input and grad_weight for backward, which hands them on (scaled in place when the incoming gradient is not
1): no [BT, V] tensor, and no saved hidden state or log-probabilities. Triton kernels, GPU only: this rule is
modelled from the source and not measured.
"""

from __future__ import annotations

from planner.errors import PlannerError
from planner.estimate.step import layers as ly
from planner.estimate.step import ops
from planner.estimate.step.tape import Fake, Tape
from planner.specs import Loss, TrainSpec

LIGER_NOTE = (
    "--loss fused-linear-ce is modelled from Liger-Kernel's source (ops/fused_linear_cross_entropy.py: the "
    "forward computes and keeps the hidden-state and lm_head gradients, one [chunk, vocabulary] logits buffer at a "
    "time) and not yet measured: its Triton kernels run only on a GPU. Cut Cross-Entropy (cut_cross_entropy) keeps "
    "no lm_head-sized gradient from its forward and would be lower by that much."
)


def loss_notes(train: TrainSpec) -> list[str]:
    """What the user should know about the loss recipe's rule."""
    if train.loss.kind is Loss.FUSED_LINEAR_CE:
        return [LIGER_NOTE]
    if train.loss.kind is Loss.TRL_FUSED_LM_HEAD:
        from planner.estimate.step.trl_loss import TRL_NOTE

        return [TRL_NOTE]
    if train.loss.kind is Loss.CHUNKED_CE:
        return [f"--loss chunked-ce: torchtune's CEWithChunkedOutputLoss in {train.loss.chunks} chunks of the "
                "sequence, lm_head applied per chunk (TransformerDecoder.chunked_output); the fp32 upcast and its "
                "gradients exist one chunk at a time, the fp32 log-probabilities of every chunk stay saved."]
    return []


def torch_chunk_sizes(n: int, chunks: int) -> list[int]:
    """``torch.chunk(n, chunks)``'s sizes: ceil(n / chunks) each, the last one smaller (possibly fewer chunks)."""
    size = -(-n // chunks)
    return [min(size, n - start) for start in range(0, n, size)]


def _passthrough(tape: Tape, node, grads_out):
    """CloneBackward0: the incoming gradient is handed on."""
    return [grads_out[0]]


def chunked_ce(t: Tape, fam, hidden: Fake, ids: Fake, chunks: int) -> tuple[Fake, int]:
    """torchtune's chunked output projection and CEWithChunkedOutputLoss; returns the loss and the logits'
    bytes (all chunks)."""
    b, s, h = hidden.shape
    sizes = torch_chunk_sizes(s, chunks)
    # TransformerDecoder.chunked_output: h.chunk(n, dim=1) (views), then self.output(chunk) per chunk
    parts = t.op("split", [hidden], [((b, c, h), hidden.dtype) for c in sizes], [], alias=hidden.st)
    logits = []
    for part in parts:
        x = part
        if b > 1 and len(sizes) > 1:  # not contiguous: matmul's reshape to [b*c, h] copies
            x = t.op("clone", [part], [(part.shape, part.dtype)], [], _passthrough)[0]
        logits.append(ly.linear(t, fam.ctx, x, fam.lm_head))
        del x
    del parts, part, hidden
    logits_bytes = sum(x.nbytes for x in logits)
    # the recipe: labels = torch.hstack((labels[..., 1:], ignore_labels_cache[:b]))
    labels = t.new((b, s), "int64")
    # CEWithChunkedOutputLoss.forward
    mask = t.new((b, s), "bool")  # labels != ignore_index
    total_elements = t.new((), "int64")  # .sum()
    del mask
    if b > 1 and len(sizes) > 1:  # target_chunk.reshape(-1) of a non-contiguous chunk copies
        label_chunks = [t.new((b * c,), "int64") for c in sizes]
    else:
        label_chunks = [labels] * len(sizes)
    total = None
    for i, c in enumerate(sizes):
        chunk = logits[i]
        logits[i] = None  # the list keeps each chunk until the loss returns; its fp32 copy lives for one chunk
        x = t.view(chunk, (b * c, chunk.shape[-1]))
        x = ops.to(t, x, "fp32")
        logp = _log_softmax_saved(t, x)
        del x
        total_weight = t.new((), "fp32")
        part_loss = t.op("nll_loss", [logp], [((), "fp32")], [label_chunks[i], total_weight])[0]
        del logp, total_weight
        total = ops.add_scalar(t, part_loss) if total is None else ops.add(t, total, part_loss)
        del part_loss
        logits[i] = chunk  # still referenced by the caller's list
        del chunk
    loss = t.op("div", [total, total_elements], [((), "fp32")], [total_elements])[0]
    del total, labels, label_chunks, logits
    return loss, logits_bytes


def _log_softmax_saved(t: Tape, x: Fake) -> Fake:
    """log_softmax, which saves its output, with that output counted as saved from its allocation on (as a
    profile names it: a tensor autograd saves is an activation): the last chunk's log-probabilities are
    allocated at the loss forward's peak."""
    nbytes = x.nbytes
    t.sim.saved += nbytes
    try:
        out = t.op("log_softmax", [x], [(x.shape, x.dtype)], [])[0]
    finally:
        t.sim.saved -= nbytes
    t.save_result(out)
    return out


def liger_chunk_size(num_tokens: int, vocab: int, hidden: int) -> int:
    """Liger's chunk of tokens (fused_linear_cross_entropy_forward, chunk_mem_const 1): the transient logits of one
    chunk are bounded by about BT x H elements."""
    inc_factor = -(-vocab // hidden)
    per = -(-num_tokens // inc_factor)
    size = 1 << max(per - 1, 0).bit_length()  # triton.next_power_of_2
    return min(size, num_tokens)


def liger_is_linear_in_micro_batch(micro_batches: tuple[int, ...], seq_len: int, vocab: int, hidden: int) -> bool:
    """Liger's [chunk, V] logits buffer is linear in the micro-batch only where every chunk is all b * s tokens
    (next_power_of_2 rounds it otherwise: ``liger_chunk_size``)."""
    return all(liger_chunk_size(b * seq_len, vocab, hidden) == b * seq_len for b in micro_batches)


def fused_linear_ce(t: Tape, fam, hidden: Fake, ids: Fake) -> Fake:
    """Liger's LigerForCausalLMLoss -> LigerFusedLinearCrossEntropyFunction (see the module docstring)."""
    lin = fam.lm_head
    if lin.lora_a is not None or lin.quant:
        raise PlannerError("--loss fused-linear-ce passes lm_head.weight to the fused kernel directly: a LoRA "
                           "adapter or 4-bit weight on lm_head is not supported; leave lm_head out of the targets.")
    b, s, h = hidden.shape
    vocab = lin.w.shape[0]
    tokens = b * s
    # LigerForCausalLMLoss: labels = F.pad(labels, (0, 1)); shift_labels = labels[..., 1:].contiguous()
    padded = t.new((b, s + 1), "int64")
    shift_labels = t.new((b, s), "int64")
    del padded
    x = t.view(hidden, (tokens, h))
    del hidden
    grad_input = t.new((tokens, h), x.dtype)  # torch.zeros_like(_input)
    grad_weight = t.new(lin.w.shape, lin.w.dtype) if lin.w.trainable else None  # zeros_like(weight)
    loss_1d = t.new((tokens,), "fp32")
    mask = t.new((tokens,), "bool")  # target != ignore_index, .sum().item()
    del mask
    logits_storage = t.new((liger_chunk_size(tokens, vocab, h), vocab), x.dtype)
    del logits_storage  # released at the end of the forward (``del logits_storage``)
    saved = [grad_input] + ([grad_weight] if grad_weight is not None else [])
    # the node's extra (released with its saved tensors once it has run) hands the gradients on
    handed = [grad_input.st, grad_weight.st if grad_weight is not None else None]
    loss = t.op("fused_linear_cross_entropy", [x, lin.w], [((), "fp32")], saved, _handed_rule, handed)[0]
    del x, grad_input, grad_weight, loss_1d, shift_labels, saved, handed
    return loss  # torch.sum(loss_1d)


def _handed_rule(tape: Tape, node, grads_out):
    """fused_linear_cross_entropy_backward: the gradients saved by the forward are returned (element_mul_kernel
    scales them in place when the incoming gradient is not 1)."""
    return list(node.extra)
