"""A symbolic autograd tape: what PyTorch keeps alive during a training step, without torch.

Family modules (step/simulate.py) write each transformer layer the way the installed transformers code writes it,
but on ``Fake`` tensors that carry only shape, dtype and requires-grad. Each op allocates its outputs and records
a ``Node`` holding exactly the tensors that the op's PyTorch autograd formula saves for backward
(torch/csrc/autograd/generated from tools/autograd/derivatives.yaml), and a rule for the gradients (and scratch)
its backward allocates. Liveness follows CPython reference counting, as PyTorch's does: a storage is freed when
the last Fake or Node referring to it is dropped, so a family function that mirrors the HF forward (locals going
out of scope, values rebound) frees what PyTorch frees, when it frees it.

``Sim`` counts live bytes, saved (activation) bytes and parameter-gradient bytes, and records the peak of each
phase with the category split at that moment. ``backward()`` replays the nodes in reverse creation order (the
order the autograd engine runs a single-device graph: highest sequence number first), accumulating gradients
like the engine's InputBuffer (in place) and AccumulateGrad (the first gradient is stolen, later ones added in
place), and releasing each node's saved tensors after it runs (``retain_graph=False``).

The objects it is made of (``Sim``, ``Storage``, ``Param``, ``Fake``, ``Node``) are in ``sim``, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

from planner.estimate.step import late_segments, offload
from planner.estimate.step.in_backward import (
    _STOLEN_SUM,
    _fresh_params,
    _name_fresh_param_grads,
    _step_in_hook,
    param_grad_storage,
)
from planner.estimate.step.sim import (
    Edge,
    Fake,
    Node,
    Param,
    PhasePeak,
    Sim,
    StopRecompute,
    Storage,
    tensor_bytes,
)

__all__ = ["Edge", "Fake", "Node", "Param", "PhasePeak", "Sim", "StopRecompute", "Storage", "Tape", "backward",
           "default_rule", "release"]


class Tape:
    """Creates tensors and nodes on a Sim; ``no_grad`` and checkpointing switch what is recorded."""

    def __init__(self, sim: Sim, *, device: str = "cuda", cpu=None, hold_grads_over: int = 0,
                 keep_param_grads: bool = True) -> None:
        self.sim = sim
        self.grad_enabled = True
        self.recording: list[Node] | None = None  # nodes of the checkpointed region being recorded
        self.saving = True  # False inside a checkpointed forward: saved tensors are not kept
        self.keep_param_grads = keep_param_grads  # False: gradients are reduced away as they arrive (ZeRO 2/3)
        self.split_loss = False  # FSDP2: the loss's forward is the phase "forward_loss" (logits.py)
        # ZeRO-2: a gradient of more elements than DeepSpeed's reduce bucket is reduced where it is, when the next
        # gradient arrives (0: no such holding)
        self.hold_grads_over = hold_grads_over
        self.held_grad: Storage | None = None
        # ZeRO-3 without contiguous gradients: (bucket elements, copies per reduction); the gradients waiting
        self.zero3_bucket: tuple[int, int] = ()
        self.bucket_held: list[Storage] = []
        self.bucket_elements = 0
        self.late_phase = "backward_late"  # the late backward's current segment (late_segments.py)
        # ZeRO-2's reduce bucket as DeepSpeed fills it (hold_grads_over elements): the gradient elements arrived,
        # those in the open bucket, and those reduced so far (late_segments.py names sub-segments by them)
        self.arrived_elements = 0
        self.bucket_fill = 0
        self.reduced_elements = 0
        self.held_any = False  # a gradient larger than the bucket was held (the rule changed the step)
        self.device = device  # kernels differ: CPU casts mixed-dtype operands, dropout masks
        # On CPU: the CPU kind (cpu_kernels.py) -- whether 16-bit matmuls run oneDNN with a workspace -- and the
        # matmul calls whose workspace it does not know (reported, counted as 0)
        self.cpu = cpu
        self.unknown_matmuls: set = set()
        # During a checkpoint recomputation: how many saving ops are still to come before it stops early
        # (torch.utils.checkpoint non-reentrant "early stop", on by default).
        self.saves_left: int | None = None
        # --selective-ac op: the checkpointed layer's policy cache (sac.py): a Recorder in its forward, a
        # Replayer in its recomputation; None otherwise
        self.sac = None
        # Activation offloading (offload.py): True while the forward runs under save_on_cpu; ops then also list
        # the parameters they save (``packs``), and every saved tensor is packed to the host
        self.packing = False
        # torch.autocast (autocast.py): the dtype matmuls cast to ("" = off) and the region's weight-cast cache
        self.autocast = ""
        self.autocast_step = ""  # the step's autocast dtype, re-entered by a checkpoint's recomputation
        self.autocast_cache: dict[int, Fake] = {}
        # Optimizer in backward (torchtune's optimizer_in_bwd): each parameter's post-accumulate-grad hook steps its
        # own optimizer (scratch: this many bytes per element of the parameter) and frees its gradient; None: off
        self.step_in_backward: int | None = None
        # with it, the parameters whose gradient the running node makes and AccumulateGrad steals at once, and the
        # gradient storages already counted as gradients from their allocation (param_grad_storage)
        self.fresh_params: set[int] = set()
        self.counted_grads: set[int] = set()

    @property
    def packs(self) -> bool:
        """Saved tensors are packed to the host now (outside checkpointed regions, whose hook is innermost)."""
        return self.packing and self.saving

    # ------------------------------------------------------------ tensors

    def new(self, shape, dtype: str) -> Fake:
        return Fake(shape, dtype, Storage(self.sim, tensor_bytes(shape, dtype)))

    def view(self, x: Fake, shape) -> Fake:
        return Fake(shape, x.dtype, x.st, x.node, x.out_index)

    def scratch(self, nbytes: int) -> Storage:
        """A temporary that lives as long as the caller keeps the returned object."""
        return Storage(self.sim, nbytes)

    # ------------------------------------------------------------ recording

    def op(
        self,
        name: str,
        inputs: list,
        outputs: list[tuple[tuple[int, ...], str]],
        saved: list,
        rule: Callable | None = None,
        extra=None,
        alias: Storage | None = None,
    ) -> list[Fake]:
        """Run an op: allocate outputs; if any input needs a gradient, record a node that saves ``saved``.

        ``inputs`` are Fakes or Params; ``saved`` are Fakes (their storages are kept) or Storages.
        ``rule(node, grads_out) -> list of grads for inputs`` allocates the backward's results; the default
        allocates one gradient per differentiable input, shaped like it. ``alias``: the outputs are views of
        that storage (split, chunk) instead of new tensors.
        """
        node = None
        edges = None
        if self.grad_enabled:
            needs = False
            edges = []
            for i in inputs:
                if type(i) is Fake:
                    if i.node is not None:  # requires grad
                        edges.append((i.node, i.out_index, i.shape, i.dtype))
                        needs = True
                        continue
                elif isinstance(i, Param) and i.trainable:
                    edges.append((i,))
                    needs = True
                    continue
                edges.append(None)
            if not needs:
                edges = None
        if edges is not None:
            node = Node(name, edges, rule or default_rule, len(outputs), extra)
            self.sim._seq += 1
            node.seq = self.sim._seq
            has_saved = False
            for s in saved:
                if type(s) is Fake:
                    if s.st is not None:
                        has_saved = True
                        break
                elif s is not None and not isinstance(s, Param):
                    has_saved = True
                    break
            node.has_saved = has_saved
            if self.saving and self.packing:
                for s in saved:
                    offload.pack(self.sim, node, s, self.device)
            elif self.saving:
                for s in saved:
                    st = s.st if isinstance(s, Fake) else s
                    if st is None:
                        continue
                    if st.num_saves == 0:
                        self.sim.saved += st.nbytes
                    st.num_saves += 1
                    node.saved.append(st)
            if self.recording is not None:
                self.recording.append(node)
            self.sim.nodes.append(node)
        if node is not None and node.has_saved:
            # Autograd saves an op's inputs before the kernel runs (VariableType: SavedVariable(self) precedes
            # the redispatch), so a recomputation that stops early at this save never allocates the outputs.
            self._count_save()
        sim = self.sim
        if self.sac is not None and alias is None and hasattr(self.sac, "alias"):
            alias = self.sac.alias(name, inputs)  # a kept op returns its cached output (sac.py)
        outs = [
            Fake(shape, dtype, alias or Storage(sim, tensor_bytes(shape, dtype), name), node, k)
            for k, (shape, dtype) in enumerate(outputs)
        ]
        if self.sac is not None and hasattr(self.sac, "after"):
            self.sac.after(name, inputs, saved, outs)
        return outs

    def _count_save(self) -> None:
        if self.saves_left is not None:
            self.saves_left -= 1
            if self.saves_left <= 0:
                raise StopRecompute

    def save_result(self, out: Fake) -> None:
        """The op saves its own output (tanh, softmax, rsqrt, sdpa ...)."""
        if out.node is None:
            return
        first = not out.node.has_saved
        out.node.has_saved = True
        if self.packs:
            offload.pack(self.sim, out.node, out, self.device)
        elif self.saving:
            self.keep(out.node, [out])
        if first:
            self._count_save()

    def keep(self, node: Node, saved: list) -> None:
        """Attach saved tensors to an existing node (used by checkpoint recomputation)."""
        for s in saved:
            st = s.st if isinstance(s, Fake) else s
            if st.num_saves == 0:
                self.sim.saved += st.nbytes
            st.num_saves += 1
            node.saved.append(st)


def release(sim: Sim, node: Node) -> None:
    if node.packed:
        offload.release_host(sim, node)
    for st in node.saved:
        st.num_saves -= 1
        if st.num_saves == 0:
            sim.saved -= st.nbytes
    node.saved = []
    node.extra = None


# Gradient buffers autograd cannot accumulate into in place (see backward()).
NOT_IN_PLACE = ("view", "shared")
# Ops whose input gradient is a view of the matmul result when the input has more dims than the kernel
# (F.linear on [b, s, h] runs mm on [b*s, h] and reshapes; matmul on [B, H, s, d] runs bmm on [B*H, s, d]).
_VIEW_GRAD_RANK = {"linear": 2, "bmm": 3}


def default_rule(tape: Tape, node: Node, grads_out: list) -> list:
    """One new gradient per differentiable input (the common case: add, mul, linear, ...)."""
    out = []
    view_rank = _VIEW_GRAD_RANK.get(node.name)
    for e in node.edges:
        if e is None:
            out.append(None)
        elif len(e) == 1:
            p = e[0]  # numel, not the shape: a grouped-experts weight reports its whole size (moe._Grouped)
            out.append(param_grad_storage(tape, p, p.numel * tensor_bytes((), p.dtype)))
        else:
            tag = "view" if view_rank is not None and len(e[2]) > view_rank else ""
            out.append(Storage(tape.sim, tensor_bytes(e[2], e[3]), tag))
    return out


def _accumulate_grad(tape: Tape, param, g: Storage) -> None:
    """AccumulateGrad with the parameter's summed gradient."""
    sim = tape.sim
    if tape.keep_param_grads:
        if param.grad is None:
            param.grad = g  # AccumulateGrad steals a fresh gradient
            if g.tag != _STOLEN_SUM:
                sim.grads += g.nbytes
        if tape.step_in_backward is not None:
            _step_in_hook(tape, param)
        return  # else added in place into .grad; the incoming buffer is freed
    # ZeRO 2/3: copied into a reduce bucket and the incoming buffer freed. The first gradient starts the
    # buckets and the gradient partition.
    if sim.phase == "backward":
        sim.set_phase(tape.late_phase)
    if tape.zero3_bucket:
        _hold_in_bucket(tape, param, g)
        return
    if tape.hold_grads_over:
        # stage_1_and_2.py reduce_independent_p_g_buckets_and_remove_grads: the bucket is reduced when this
        # gradient would overflow it (``bucket.elements + param.numel() > self.reduce_bucket_size``), before this
        # one joins it; reduce_ipg_grads -> copy_grads_in_partition then makes a rank's grads_in_partition at the
        # first reduced gradient of its partition (peak.py adds it from this sub-segment on)
        if tape.bucket_fill and tape.bucket_fill + param.numel > tape.hold_grads_over:
            late_segments.flushed(tape, tape.arrived_elements)
            tape.bucket_fill = 0
        tape.arrived_elements += param.numel
        tape.bucket_fill += param.numel
    _release_held(tape)
    if tape.hold_grads_over and param.numel > tape.hold_grads_over:
        # ZeRO-2 (stage_1_and_2.py reduce_independent_p_g_buckets_and_remove_grads): a gradient larger than the
        # bucket is not copied into it but kept as extra_large_param_to_reduce, and reduced (then copied into
        # the partition or dropped) when the next gradient's hook finds the bucket over-full
        tape.held_grad = g
        tape.held_any = True
        if g.tag != _STOLEN_SUM:
            sim.grads += g.nbytes


def _hold_in_bucket(tape: Tape, param, g: Storage) -> None:
    """ZeRO-3 with contiguous_gradients false (deepspeed 0.19.8 stage3.py
    ``reduce_independent_p_g_buckets_and_remove_grads``): when the gradient would overflow a non-empty bucket, the
    bucket is reduced first -- ``__avg_scatter_grads`` -> reduce_scatter_coalesced's flat torch.cat of the
    bucket's gradients (each padded to a multiple of the ranks: at most ranks - 1 elements each, not counted)
    and, on gloo, the reduce-scatter's input-sized buffer -- and ``partition_grads`` drops the bucket's ``.grad``
    tensors; ``__add_grad_to_ipg_bucket`` then only lists the gradient, which stays in its own tensor."""
    sim = tape.sim
    bucket, copies = tape.zero3_bucket
    if tape.bucket_held and tape.bucket_elements + param.numel > bucket:
        held = sum(s.nbytes for s in tape.bucket_held)
        flat = [Storage(sim, held, "reduce_scatter_coalesced") for _ in range(copies if len(tape.bucket_held) > 1
                                                                               else copies - 1)]
        del flat
        sim.grads -= held
        tape.bucket_held = []
        tape.bucket_elements = 0
    tape.bucket_held.append(g)
    tape.bucket_elements += param.numel
    sim.grads += g.nbytes


def _release_held(tape: Tape) -> None:
    if tape.held_grad is not None:
        tape.sim.grads -= tape.held_grad.nbytes
        tape.held_grad = None



def _param_grad_arrives(tape: Tape, uses: dict, pending: dict, param, g: Storage | None) -> None:
    """One use of ``param`` sends its gradient ``g`` (None: that use got none); the last use runs AccumulateGrad
    with the sum of them all."""
    key = id(param)
    uses[key] -= 1
    if g is not None:
        old = pending.get(key)
        if old is None:
            pending[key] = g
        elif old.tag in NOT_IN_PLACE:
            # InputBuffer::accumulate (torch/csrc/autograd/input_buffer.cpp) adds in place only into a buffer
            # whose storage it holds the last reference to (can_accumulate_inplace). F.linear's weight gradient
            # is TBackward0's view of mm's result, and a view keeps its base (and so the storage) alive: a tied
            # embedding's lm_head gradient gets ``old + var`` when the lookup's gradient arrives -- a third
            # vocab x hidden tensor for a moment, then the two addends are freed.
            sim = tape.sim
            # ZeRO-2 holds a gradient larger than its bucket as it is (_accumulate_grad): it is .grad too
            held = tape.hold_grads_over and param.numel > tape.hold_grads_over
            stolen = not uses[key] and (tape.keep_param_grads or held) and param.grad is None
            if stolen:
                sim.grads += old.nbytes
            pending[key] = Storage(sim, old.nbytes, _STOLEN_SUM if stolen else "grad_sum")
            del old
        # else: added in place into the first; the incoming gradient is freed
    if not uses[key] and key in pending:
        _accumulate_grad(tape, param, pending.pop(key))


def backward(tape: Tape, loss: Fake, hooks: dict | None = None) -> None:
    """Replay the recorded nodes in reverse order; ``hooks[node] -> callable`` runs before a node (recompute)."""
    sim = tape.sim
    sim.set_phase("backward")
    hooks = hooks or {}
    root = loss.node
    root.grad_in[loss.out_index] = Storage(sim, loss.nbytes)  # ones_like(loss)
    nodes = sim.nodes
    sim.nodes = []
    tape.grad_enabled = False
    # A leaf's AccumulateGrad runs once, after every use of the parameter has sent its gradient; until then the
    # sum waits in the node's InputBuffer (torch/csrc/autograd/engine.cpp; input_buffer.cpp adds the later ones
    # in place): a tied embedding's gradient from the lm_head matmul is a temporary until the embedding
    # lookup's backward, and so is a fused expert tensor's until the last expert's.
    uses: dict[int, int] = {}
    for node in nodes:
        for e in node.edges:
            if e is not None and len(e) == 1:
                uses[id(e[0])] = uses.get(id(e[0]), 0) + 1
    pending: dict[int, Storage] = {}
    for node in reversed(nodes):
        if node.grad_in.count(None) == node.num_outputs:  # no gradient reached the node
            for e in node.edges:  # a use that sends no gradient still counts down its parameter's uses
                if e is not None and len(e) == 1:
                    _param_grad_arrives(tape, uses, pending, e[0], None)
            continue
        if sim.trace is not None:
            sim.trace.append((node.name, sim.live))
        hook = hooks.pop(id(node), None)
        if hook is not None:
            hook()
        grads_out = node.grad_in
        unpacked = offload.unpack(sim, node, tape.device) if node.packed else None
        if tape.step_in_backward is not None:
            tape.fresh_params = _fresh_params(tape, uses, pending, node.edges)
        grads = node.rule(tape, node, grads_out)
        if tape.fresh_params:
            _name_fresh_param_grads(tape, node.edges, grads)
        del unpacked  # save_on_cpu's device copies die when the node's backward returns
        node.grad_in = [None] * node.num_outputs
        del grads_out
        release(sim, node)
        pairs = list(zip(node.edges, grads, strict=True))
        if node.name == "linear" and len(pairs) == 3:
            # addmm's next edges are (bias, input, weight) (torch derivatives.yaml; F.linear and HF Conv1D):
            # the bias's AccumulateGrad runs before the weight's, so a ZeRO-2 hook holding a large weight
            # gradient keeps it until the next parameter's gradient arrives
            pairs = [pairs[0], pairs[2], pairs[1]]
        del grads
        for e, g in pairs:
            if e is None or g is None:
                continue
            if len(e) == 1:
                _param_grad_arrives(tape, uses, pending, e[0], g)
            else:
                target, idx = e[0], e[1]
                old = target.grad_in[idx]
                if old is None:
                    target.grad_in[idx] = g
                elif old.tag in NOT_IN_PLACE:
                    # InputBuffer::accumulate adds in place only into a buffer it holds the last reference to
                    # (can_accumulate_inplace); a view of another result (the input gradient of a linear on a
                    # 3-D input is mm's output reshaped) or a gradient shared by two edges gets ``old + var``:
                    # a new sum, then both are freed.
                    target.grad_in[idx] = Storage(sim, old.nbytes, "grad_sum")
                # else: added in place into the buffer; the incoming gradient is freed
                del old
            del g  # the incoming gradient is freed as soon as it is accumulated, before the next node runs
        del pairs
    _release_held(tape)  # the end-of-backward epilogue reduces what is left
    tape.grad_enabled = True
