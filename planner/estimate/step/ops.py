"""The torch ops the supported transformer families use, on the symbolic tape (tape.py).

Each function mirrors one PyTorch op: its output tensors, what its autograd node saves (PyTorch
tools/autograd/derivatives.yaml, "self: ... result ..."), and what its backward allocates. Where a backward
formula builds intermediates (pow, rsqrt, mul with broadcasting) the rule allocates them in the same order, so the
backward peak includes them. Views share their input's storage; a reshape of a non-mergeable view copies.
"""

from __future__ import annotations

from planner.estimate.step import autocast
from planner.estimate.step.in_backward import param_grad_storage
from planner.estimate.step.tape import Fake, Param, Storage, Tape, default_rule
from planner.units import dtype_bytes


def _nb(shape, dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * dtype_bytes(dtype)


def _grad_like(tape: Tape, edge) -> Storage | None:
    if edge is None:
        return None
    if len(edge) == 1:
        return param_grad_storage(tape, edge[0], edge[0].numel * dtype_bytes(edge[0].dtype))
    return Storage(tape.sim, _nb(edge[2], edge[3]))


def _passthrough_rule(tape: Tape, node, grads_out):
    """add / add-scalar / views: the incoming gradient is handed on unchanged (no allocation)."""
    g = grads_out[0]
    if g is not None and sum(e is not None and len(e) > 1 for e in node.edges) > 1:
        g.tag = "shared"  # one tensor in two InputBuffers: neither can add into it in place
    return [g if e is not None else None for e in node.edges]


# ---------------------------------------------------------------- elementwise


def broadcast(a, b) -> tuple[int, ...]:
    """The broadcast shape of two operands (PyTorch/NumPy rules)."""
    x, y = tuple(a), tuple(b)
    if x == y:
        return x  # the common case: same shapes
    n = max(len(x), len(y))
    x = (1,) * (n - len(x)) + x
    y = (1,) * (n - len(y)) + y
    return tuple(max(i, j) for i, j in zip(x, y, strict=True))


def add(tape: Tape, a: Fake, b: Fake) -> Fake:
    shape = broadcast(a.shape, b.shape)
    dtype = promote(a.dtype, b.dtype)
    cast = _cpu_promotion_copy(tape, a, b, dtype)
    out = tape.op("add", [a, b], [(shape, dtype)], [], _add_rule)[0]
    del cast
    return out


def _cpu_promotion_copy(tape: Tape, a, b, dtype: str):
    """On CPU a binary op between a 16-bit and an fp32 tensor first copies the 16-bit operand to fp32
    (``aten::to`` inside ``aten::add``/``aten::mul``, seen in the profiler); CUDA casts inside the kernel."""
    if tape.device != "cpu" or not isinstance(a, Fake) or not isinstance(b, Fake) or a.dtype == b.dtype:
        return None
    low = a if a.dtype != dtype else b
    return tape.scratch(low.numel * dtype_bytes(dtype))


def _add_rule(tape: Tape, node, grads_out):
    # AddBackward returns the same gradient to both inputs; a dtype or broadcast difference makes a new one.
    g = grads_out[0]
    out = []
    for e in node.edges:
        if e is None:
            out.append(None)
        elif len(e) == 1 or _nb(e[2], e[3]) != g.nbytes:
            out.append(_grad_like(tape, e))
        else:
            out.append(g)
    return out


def add_scalar(tape: Tape, a: Fake) -> Fake:
    return tape.op("add_scalar", [a], [(a.shape, a.dtype)], [], _passthrough_rule)[0]


def mul_scalar(tape: Tape, a: Fake) -> Fake:
    return tape.op("mul_scalar", [a], [(a.shape, a.dtype)], [])[0]


def mul(tape: Tape, a, b) -> Fake:
    """Tensor x tensor (or parameter): saves the other operand of each input that needs a gradient."""
    a_grad = _needs(a)
    b_grad = _needs(b)
    saved = []
    if a_grad:
        saved.append(b)
    if b_grad:
        saved.append(a)
    shape = broadcast(a.shape, b.shape)
    dtype = promote(a.dtype, b.dtype)
    cast = _cpu_promotion_copy(tape, a, b, dtype)
    # a parameter operand is saved too; only activation offloading (which copies it) counts it
    keep = saved if tape.packs else [s for s in saved if isinstance(s, Fake)]
    out = tape.op("mul", [a, b], [(shape, dtype)], keep, _mul_rule)[0]
    del cast
    return out


def _mul_rule(tape: Tape, node, grads_out):
    g = grads_out[0]
    out = []
    for e in node.edges:
        if e is None:
            out.append(None)
            continue
        full = Storage(tape.sim, g.nbytes)  # grad * other, at the output's shape and dtype
        shape_bytes = e[0].numel * dtype_bytes(e[0].dtype) if len(e) == 1 else _nb(e[2], e[3])
        if shape_bytes != g.nbytes:
            out.append(_grad_like(tape, e))  # sum_to_size / dtype cast of a broadcast operand
            del full
        else:
            out.append(full)
    return out


def to(tape: Tape, x: Fake, dtype: str) -> Fake:
    """``x.to(dtype)``: the same tensor when the dtype already matches, else a copy (nothing saved)."""
    if x.dtype == dtype:
        return x
    return tape.op("to", [x], [(x.shape, dtype)], [])[0]


def pow_(tape: Tape, x: Fake) -> Fake:
    """``x.pow(e)``: saves x; backward ``grad * (e * x.pow(e - 1))`` builds two x-sized intermediates."""
    return tape.op("pow", [x], [(x.shape, x.dtype)], [x], _pow_rule)[0]


def _pow_rule(tape: Tape, node, grads_out):
    g = grads_out[0]
    t1 = Storage(tape.sim, g.nbytes)  # x.pow(e - 1)
    t2 = Storage(tape.sim, g.nbytes)  # e * ...
    del t1
    res = Storage(tape.sim, g.nbytes)  # grad * ...
    del t2
    return [res]


def mean_last(tape: Tape, x: Fake) -> Fake:
    """``x.mean(-1, keepdim=True)``: saves nothing; backward expands and divides (one x-sized tensor)."""
    return tape.op("mean", [x], [(x.shape[:-1] + (1,), x.dtype)], [])[0]


def rsqrt(tape: Tape, x: Fake) -> Fake:
    out = tape.op("rsqrt", [x], [(x.shape, x.dtype)], [], _small_rule(3))[0]
    tape.save_result(out)
    return out


def _small_rule(num_temps: int):
    def rule(tape: Tape, node, grads_out):
        temps = [Storage(tape.sim, grads_out[0].nbytes) for _ in range(num_temps - 1)]
        res = default_rule(tape, node, grads_out)
        del temps
        return res

    return rule


def unary_saving_input(tape: Tape, name: str, x: Fake) -> Fake:
    """silu, gelu (exact or tanh-approximate), relu: save the input; backward makes one gradient."""
    return tape.op(name, [x], [(x.shape, x.dtype)], [x])[0]


def unary_saving_output(tape: Tape, name: str, x: Fake, dtype: str | None = None) -> Fake:
    """tanh, softmax, log_softmax: save the result (``dtype`` converts the input first, as softmax(dtype=))."""
    if dtype is not None and dtype != x.dtype:
        x = to(tape, x, dtype)
    out = tape.op(name, [x], [(x.shape, x.dtype)], [])[0]
    tape.save_result(out)
    return out


def dropout(tape: Tape, x: Fake, p: float, device: str) -> Fake:
    """``F.dropout`` in training. p == 0 returns the input itself (ATen ``dropout``).

    On CUDA the fused ``native_dropout`` saves a bool mask (1 byte per element); on CPU ATen's ``_dropout``
    draws a noise tensor in the input dtype and multiplies (aten/src/ATen/native/Dropout.cpp), saving the noise.
    """
    if p <= 0.0:
        return x
    mask_dtype = "bool" if device != "cpu" else x.dtype
    if not x.requires_grad:
        noise = tape.new(x.shape, mask_dtype)
        out = tape.new(x.shape, x.dtype)
        del noise
        return out
    noise = tape.new(x.shape, mask_dtype)
    return tape.op("dropout", [x], [(x.shape, x.dtype)], [noise])[0]


# ---------------------------------------------------------------- matmuls


def linear(tape: Tape, x: Fake, w: Param, bias: Param | None = None, *, save_input: bool = False,
           conv1d: bool = False, zero3: bool = False) -> Fake:
    """``F.linear`` / HF Conv1D (addmm): saves the input only when the weight is trainable (or ``save_input``:
    DeepSpeed ZeRO-3's linear, layers.Ctx.zero3_linear); the weight itself is a parameter (already counted).
    Backward: grad_input = grad @ W, grad_W = grad^T @ x, grad_b = grad.sum(0). ``conv1d``: GPT-2's Conv1D keeps
    its weight as [in, out] and calls ``addmm(bias, x, W)`` (F.linear multiplies by the view ``W.t()``).
    ``zero3``: DeepSpeed's LinearFunctionForZeroStage3 stands in for F.linear (zero/linear.py)."""
    if tape.autocast:
        x, w, bias = autocast.cast(tape, x), autocast.cast(tape, w), autocast.cast(tape, bias)
    inputs = [x, w] + ([bias] if bias is not None else [])
    saved = [x] if (_needs(w) or save_input) else []
    if autocast.is_cast_weight(w) and x.requires_grad:
        saved.append(w)  # mm/addmm save their mat2 for the input's gradient: the 16-bit copy (autocast.py)
    if tape.packs:
        # activation offloading packs the parameters a node saves too (offload.py): mm/addmm save the weight (W.t()
        # or Conv1D's W) when the input needs a gradient; LinearFunctionForZeroStage3 saves input, weight, bias
        if zero3:
            saved = [x, w] + ([bias] if bias is not None else [])
        elif x.requires_grad:
            saved.append(w)
    d_out = w.shape[0]
    out_shape = x.shape[:-1] + (d_out,)
    # F.linear's weight gradient reaches AccumulateGrad through TBackward0 (W.t()), a view of mm's result; Conv1D's
    # (mm(x.t(), grad)) and LinearFunctionForZeroStage3's (grad.t().matmul(x)) are new tensors
    extra = _WEIGHT_GRAD_VIEW if not conv1d and not zero3 else None
    if not onednn(tape, x.dtype) or x.dtype != w.dtype:
        return tape.op("linear", inputs, [(out_shape, x.dtype)], saved, _linear_rule, extra)[0]
    tokens = _numel(x.shape[:-1])
    d_in = x.shape[-1]
    # forward: mm(x, W.t()) (F.linear) or addmm(b, x, W) (Conv1D); a workspace after the output (cpu_kernels.py)
    rule = _onednn_linear_rule(x.dtype, tokens, d_in, d_out, conv1d, zero3)
    out = tape.op("linear", inputs, [(out_shape, x.dtype)], saved, rule, extra)[0]
    matmul_workspace(tape, (x.dtype, 1, tokens, d_in, d_out, False, not conv1d))
    return out


_WEIGHT_GRAD_VIEW = "weight_grad_view"


def _tag_weight_grad(node, grads: list) -> list:
    if node.extra is _WEIGHT_GRAD_VIEW and grads[1] is not None:
        grads[1].tag = "view"
    return grads


def _linear_rule(tape: Tape, node, grads_out):
    return _tag_weight_grad(node, default_rule(tape, node, grads_out))


def _onednn_linear_rule(dtype: str, tokens: int, d_in: int, d_out: int, conv1d: bool, zero3: bool = False):
    """Backward of a 16-bit linear on oneDNN, each matmul with its workspace after its result. The generated
    autograd functions (torch/csrc/autograd/generated/Functions.cpp, formulas from derivatives.yaml) run
    MmBackward0 (F.linear without bias) as mat2 (the weight) then self (the input), and AddmmBackward0 (a bias:
    F.linear with bias, Conv1D) as mat1 (the input) then mat2; the bias gradient (sum_to_size) comes last.
    DeepSpeed ZeRO-3's LinearFunctionForZeroStage3.backward (zero/linear.py) computes the input's gradient
    (``grad_output.matmul(weight)``), then the weight's (``grad_output.reshape(-1, out).t().matmul(input...)``,
    the same matmul as F.linear's), then the bias's, with or without a bias."""
    # grad_x = grad @ W (F.linear: W is row-major) or grad @ W.t() (Conv1D)
    grad_x = (dtype, 1, tokens, d_out, d_in, False, conv1d)
    # grad_W: F.linear's W.t() is column-major, so (grad.t() @ x).t(); Conv1D: x.t() @ grad
    grad_w = (dtype, 1, d_in, tokens, d_out, True, False) if conv1d else (dtype, 1, d_out, tokens, d_in, True, False)
    calls = (grad_x, grad_w)

    def rule(tape: Tape, node, grads_out):
        edges = node.edges
        grads: list = [None] * len(edges)
        for i in ((0, 1, 2)[:len(edges)] if len(edges) == 3 or zero3 else (1, 0)):
            e = edges[i]
            if e is None:
                continue
            grads[i] = default_rule(tape, _OneEdge(e, node.name), None)[0]
            if i < 2:
                matmul_workspace(tape, calls[i])
        return _tag_weight_grad(node, grads)

    return rule


class _OneEdge:
    """A node seen through one of its edges, for default_rule."""

    __slots__ = ("edges", "name")

    def __init__(self, edge, name: str) -> None:
        self.edges = [edge]
        self.name = name


def onednn(tape: Tape, dtype: str) -> bool:
    """This CPU run sends ``dtype`` matmuls to oneDNN (cpu_kernels.py)."""
    return tape.cpu is not None and tape.device == "cpu" and tape.cpu.uses_onednn(dtype)


def matmul_workspace(tape: Tape, call) -> None:
    """oneDNN's workspace of one 16-bit matmul on CPU: allocated after the output, freed before the op returns
    (cpu_kernels.py); unknown calls are recorded and counted as 0."""
    nbytes = tape.cpu.workspace_bytes(call)
    if nbytes is None:
        tape.unknown_matmuls.add(call)
        return
    if nbytes:
        ws = Storage(tape.sim, nbytes, "workspace")
        del ws


def matmul(tape: Tape, a: Fake, b: Fake, out_shape, copy_a: bool = False, copy_b: bool = False,
           a_t: bool = False, b_t: bool = False) -> Fake:
    """Batched ``torch.matmul``: bmm saves both (reshaped) operands. 4-D operands [B, H, ., .] are reshaped to
    [B*H, ., .]; ``copy_*``: the operand is a strided view whose batch and head dims do not merge (strides
    of a transpose, of an expand, of a slice of a fused projection), so the reshape copies -- unless B or H is
    1, when any strides merge -- and the copy is what is saved. ``a_t``/``b_t``: the operand is a transposed
    view (``k.transpose(2, 3)``), which only oneDNN's CPU workspace depends on."""
    copy_a = copy_a and _batch_heads_differ(a)
    copy_b = copy_b and _batch_heads_differ(b)
    if copy_a:
        a = tape.op("reshape_copy", [a], [(a.shape, a.dtype)], [])[0]
        a_t = False  # the copy is contiguous
    if copy_b:
        b = tape.op("reshape_copy", [b], [(b.shape, b.dtype)], [])[0]
        b_t = False
    saved = []
    if a.requires_grad or b.requires_grad:
        saved = [a, b] if (a.requires_grad and b.requires_grad) else [b] if a.requires_grad else [a]
    if not onednn(tape, a.dtype) or a.dtype != b.dtype:
        return tape.op("bmm", [a, b], [(out_shape, promote(a.dtype, b.dtype))], saved)[0]
    batch = _numel(out_shape[:-2])
    m, k, n = out_shape[-2], a.shape[-1], out_shape[-1]  # b may be passed untransposed (k for q @ k^T)
    out = tape.op("bmm", [a, b], [(out_shape, a.dtype)], saved,
                  _onednn_bmm_rule(a.dtype, batch, m, k, n, a_t, b_t))[0]
    matmul_workspace(tape, (a.dtype, batch, m, k, n, a_t, b_t))
    return out


def _onednn_bmm_rule(dtype: str, batch: int, m: int, k: int, n: int, a_t: bool, b_t: bool):
    """bmm's backward on oneDNN (derivatives.yaml ``bmm``; BmmBackward0 runs mat2 first):
    ``self.transpose(1, 2).bmm(grad)`` then ``grad.bmm(mat2.transpose(1, 2))``, each with its workspace after
    its result."""
    calls = ((dtype, batch, m, n, k, False, not b_t), (dtype, batch, k, m, n, not a_t, False))

    def rule(tape: Tape, node, grads_out):
        edges = node.edges
        grads: list = [None] * len(edges)
        for i in (1, 0):
            if edges[i] is None:
                continue
            grads[i] = default_rule(tape, _OneEdge(edges[i], node.name), None)[0]
            matmul_workspace(tape, calls[i])
        return grads

    return rule


# ---------------------------------------------------------------- helpers


def _batch_heads_differ(x: Fake) -> bool:
    return len(x.shape) < 4 or (x.shape[0] > 1 and x.shape[1] > 1)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _needs(x) -> bool:
    return (isinstance(x, Fake) and x.requires_grad) or (isinstance(x, Param) and x.trainable)


_RANK = {"bool": 0, "int64": 0, "bf16": 1, "fp16": 1, "fp32": 2}


def promote(a: str, b: str) -> str:
    """Result dtype of a binary op between floating tensors (fp32 wins over 16-bit)."""
    return a if _RANK.get(a, 2) >= _RANK.get(b, 2) else b
