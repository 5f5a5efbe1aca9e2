"""One rank's profiled run: setup, steps split into marked phases, identity probes, failure handling.

Every step runs, per micro-batch, ``inputs`` (the token batch), ``forward`` (logits), ``loss``
(transformers' own causal-LM loss, called on the logits; the model output is dropped before backward, as the
HF Trainer does) and ``backward``; then ``optimizer_step`` (which also drops the gradients). Identity probes
run after setup, after each loss, after each backward and after each step. Whatever happens (an exception,
an out-of-memory error, SIGINT or SIGTERM), the recorder is stopped and what was recorded so far is
attributed and written, with the rank's status and a one-sentence message.

On CPU the torch profiler keeps every event in memory and processing them takes time proportional to the
steps recorded (about 55 ms per step of a two-layer model), so only the first ``CPU_RECORDED_STEPS`` steps
are recorded: memory is steady from step 1 on, and a run with many steps (or one interrupted after hundreds)
still writes its profile within seconds. Later steps run unrecorded (their wall-clock windows are kept).

What a rank is handed (``Job``) and the exceptions that stop it are in job.py; what it writes when the run ends
(``RankOutput``, which ``RankRun`` inherits) in rank_output.py.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from planner.profile.job import InjectedFailure, Job, Terminated
from planner.profile.rank_output import RankOutput

__all__ = ["CPU_RECORDED_STEPS", "STATUSES", "InjectedFailure", "Job", "ProgressFn", "RankRun", "Terminated",
           "run_rank"]

ProgressFn = Callable[[int, str, int], None]  # (step, phase, current bytes)
STATUSES = ("ok", "oom", "failed", "interrupted")
CPU_RECORDED_STEPS = 10


class _Signals:
    """SIGINT and SIGTERM stop the step loop once; while the recording is being written they are noted only."""

    armed = False
    received: int | None = None

    @classmethod
    def handler(cls, signum, frame):
        cls.received = signum
        if cls.armed:
            cls.armed = False
            if signum == signal.SIGTERM:
                raise Terminated(f"signal {signum}")
            raise KeyboardInterrupt


def _fault(job: Job, rank: int) -> tuple[int, str] | None:
    if not job.fail_at:
        return None
    r, step, phase = job.fail_at.split(":")
    return (int(step), phase) if int(r) == rank else None


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300].rstrip(".")


class RankRun(RankOutput):
    def __init__(self, job: Job, rank: int, local_rank: int, rank_dir: Path, progress: ProgressFn | None = None):
        self.job = job
        self.rank = rank
        self.local_rank = local_rank
        self.rank_dir = rank_dir
        self.progress = progress
        self.where = ("setup", -1)
        self.in_backward = False
        self.steps_completed = 0
        self.fault = _fault(job, rank)
        self.probe_index = 0
        self.frozen = None  # the CPU recording once CPU_RECORDED_STEPS steps are in it
        self.steps_recorded = 0

    # ------------------------------------------------------------ helpers

    def _window(self, name: str, step: int = -1, phase: str = ""):
        self.where = (phase or name, step)
        if self.progress is not None:
            self.progress(step, phase or name, self.recorder.current_bytes())
        if self.fault is not None and self.fault == (step, phase):
            self.fault = None
            with self.recorder.window(name):
                raise InjectedFailure(f"injected failure at step {step} {phase} (--fail-at)")
        return self.recorder.window(name)

    def _probe(self) -> None:
        from planner.profile import identity

        if self.frozen is not None:
            return
        self.recorder.probe(self.probe_index, identity.collect(self.built.model, self.engine.identity_optimizer()))
        self.probe_index += 1

    def _identify_grads_at_birth(self) -> None:
        """Identify every ``.grad`` as a gradient when autograd makes it. Registered before the data-parallel
        engine, so these hooks run before its own: DeepSpeed ZeRO 1/2 move small gradients into a reduce
        bucket and drop the others once reduced, and a probe after backward would never see them."""
        from planner.profile.identity import storage_ptr

        def born(param) -> None:
            if self.frozen is None and param.grad is not None:
                self.recorder.probe(self.probe_index, {"grads": [storage_ptr(param.grad)]})
                self.probe_index += 1

        for p in self.built.model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(born)

    def _install_recompute_hooks(self) -> None:
        """Mark every re-run of a checkpointed layer's forward inside backward as a ``recompute`` window.

        transformers checkpoints each layer through ``layer._gradient_checkpointing_func(fn, *args)`` and the
        recomputation calls ``fn`` again (module hooks stay outside the checkpoint), so ``fn`` is wrapped.
        """
        import torch.utils.checkpoint as torch_checkpoint

        from planner.profile.workload import checkpointed_layers

        # what torch.utils.checkpoint raises to stop a recomputation early (non-reentrant, early_stop=True)
        stop_recomputation = getattr(torch_checkpoint, "_StopRecomputationError", ())

        def wrap(original):
            def checkpoint(fn, *args, **kwargs):
                def marked(*a, **k):
                    if not self.in_backward:
                        return fn(*a, **k)
                    self.recorder.enter("recompute")
                    try:
                        return fn(*a, **k)
                    except stop_recomputation as exc:
                        # Early stop: checkpoint raised from inside the layer once every saved tensor was
                        # re-made. The unwound frames still hold the layer's locals until torch catches the
                        # error a moment later (nothing is allocated in between); free them now, so the
                        # window's end sees only what the recomputation keeps for backward.
                        traceback.clear_frames(exc.__traceback__)
                        raise
                    finally:  # also when checkpoint stops the recomputation early by raising
                        self.recorder.exit()

                return original(marked, *args, **kwargs)

            return checkpoint

        for layer in checkpointed_layers(self.built.model):
            original = getattr(layer, "_gradient_checkpointing_func", None)
            if original is not None:
                layer._gradient_checkpointing_func = wrap(original)

    # ------------------------------------------------------------ the run

    def run(self, init: Callable[[], None] | None = None) -> dict[str, Any]:
        import gc

        import pandas  # noqa: F401 - imported before the run: importing after an out-of-memory error can fail
        import torch

        from planner.profile.recorders import CpuRecorder, CudaRecorder
        from planner.profile.workload import preload
        from planner.specs import train_spec_from_dict

        job = self.job
        train = train_spec_from_dict(job.train)
        if job.device == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.recorder = CudaRecorder(self.local_rank)
        else:
            self.recorder = CpuRecorder(torch_categories=job.torch_categories)
        status, message = "ok", ""
        failed_at = None
        self.facts: dict[str, Any] = {}
        self.engine_name = ""
        started = time.time()
        preload(job.model_config, train)
        self.recorder.start()
        _Signals.armed = True
        try:
            if _Signals.received is not None:  # a signal came while modules were loading
                raise Terminated("signal") if _Signals.received == signal.SIGTERM else KeyboardInterrupt()
            self._body(train, init)
        except KeyboardInterrupt as exc:
            status = "interrupted"
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (SIGINT)"
            message = f"rank {self.rank} was {what} during {self._where()}."
        except BaseException as exc:  # noqa: BLE001 - any failure still yields a profile
            failed_at = time.time_ns()
            if os.environ.get("PLANNER_DEBUG"):  # the rank's traceback, in launcher.log
                traceback.print_exc()
            status = "oom" if _is_oom(exc) else "failed"
            if status == "oom":
                message = f"rank {self.rank} ran out of memory during {self._where()}: {_first_line(exc)}."
            else:
                message = f"rank {self.rank} failed during {self._where()}: {type(exc).__name__}: {_first_line(exc)}."
        finally:
            _Signals.armed = False
            self.in_backward = False
            # Let go of the model, gradients and optimizer before the recording is processed: after an
            # out-of-memory error that is the memory processing needs.
            self.built = self.engine = None
            gc.collect()
            recording = self.frozen if self.frozen is not None else self.recorder.stop()
            if self.frozen is None:
                self.steps_recorded = self.steps_completed
        self.facts["failed_at_unix_ns"] = failed_at
        return self._finish(recording, status, message, self.facts, self.engine_name, time.time() - started)

    def _body(self, train, init: Callable[[], None] | None) -> None:
        """Setup and the steps; its locals (batches, logits, loss) die with it, even when it raises."""
        from planner.profile.engine import make_engine
        from planner.profile.identity import param_storage_bytes
        from planner.profile.offload import offloading
        from planner.profile.workload import Batches, build_model

        job, device, facts = self.job, self.job.device, self.facts
        if init is not None:  # joining the process group
            with self._window("setup::init", phase="init"):
                init()
        with self._window("setup::build", phase="build"):
            self.built = build_model(job.model_config, train, device, seed=job.seed, weights=job.weights)
        facts["param_storage_bytes_at_build"] = param_storage_bytes(self.built.model)
        facts["num_params"] = sum(p.numel() for p in self.built.model.parameters())
        facts["num_trainable_params"] = sum(p.numel() for p in self.built.model.parameters() if p.requires_grad)
        self._identify_grads_at_birth()
        with self._window("setup::wrap", phase="wrap"):
            self.engine = make_engine(self.built, train, device, job.num_ranks, self.local_rank)
        self.engine_name = self.engine.name
        if hasattr(self.engine, "on_gradients_complete"):
            self.engine.on_gradients_complete(self._probe)
        facts["param_storage_bytes_after_wrap"] = param_storage_bytes(self.built.model)
        # What the parameters occupy in steady state (bitsandbytes casts biases to the compute dtype at the
        # first forward); updated after every step.
        facts["param_storage_bytes"] = facts["param_storage_bytes_after_wrap"]
        from planner.profile.selective_ac_run import marks_recompute

        if train.grad_checkpointing or marks_recompute(train):
            self._install_recompute_hooks()
        batches = Batches(
            train, self.built.vocab_size, seed=job.seed, rank=self.rank, device=device,
            data=job.data, tokenizer=job.tokenizer,
        )  # fmt: skip
        self._probe()
        for step in range(job.steps):
            for mb in range(train.grad_accum):
                w = f"step::{step}::{mb}::"
                with self._window(w + "inputs", step, "inputs"):
                    ids = batches.next()
                    self.engine.loss_run.packed = batches.packed  # --packing: labels, position ids
                with offloading(train):  # --activation-offload: save_on_cpu around forward and loss
                    with self._window(w + "forward", step, "forward"):
                        logits = self.engine.forward(ids, mb)
                    with self._window(w + "loss", step, "loss"):
                        loss = self.engine.loss_run.loss(logits, ids)
                        del logits
                self._probe()
                self.in_backward = True
                with self._window(w + "backward", step, "backward"):
                    self.engine.backward(loss, mb)
                    del loss
                self.in_backward = False
                self._probe()
                del ids
            with self._window(f"step::{step}::{train.grad_accum - 1}::optimizer_step", step, "optimizer_step"):
                self.engine.step()
            self._probe()
            facts["param_storage_bytes"] = param_storage_bytes(self.built.model)
            self.steps_completed = step + 1
            if device == "cpu" and self.frozen is None and step + 1 == CPU_RECORDED_STEPS and step + 1 < job.steps:
                self._freeze(train, step + 1)
        if self.frozen is None:
            self._liveness(train)

    def _freeze(self, train, steps_recorded: int) -> None:
        """Stop the CPU recording; a signal meanwhile is noted and raised once the recording is safe."""
        _Signals.armed = False
        self._liveness(train)
        self.frozen = self.recorder.stop()
        self.steps_recorded = steps_recorded
        if _Signals.received is not None:
            raise Terminated("signal") if _Signals.received == signal.SIGTERM else KeyboardInterrupt()
        _Signals.armed = True

    def _liveness(self, train) -> None:
        from planner.profile.identity import reachable_ptrs

        if self.job.device == "cpu" and (self.job.num_ranks > 1 or train.uses_deepspeed):
            # Every tensor still alive is reachable now (no autograd graph): frees gloo hid can be inferred.
            self.recorder.liveness(0, reachable_ptrs())

    def _where(self) -> str:
        phase, step = self.where
        return f"setup ({phase})" if step < 0 else f"step {step} {phase}"


def run_rank(
    job: Job,
    rank: int,
    local_rank: int,
    rank_dir: Path,
    progress: ProgressFn | None = None,
    init: Callable[[], None] | None = None,
) -> dict:
    """Run one rank and write ``rank<r>.json`` plus its timeline into ``rank_dir``."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _Signals.handler)
        except ValueError:  # not the main thread: keep Python's defaults
            pass
    _Signals.received = None
    try:
        return RankRun(job, rank, local_rank, rank_dir, progress).run(init)
    finally:
        _Signals.armed = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)
