"""One recording process of ``planner profile -- COMMAND`` (inject.py decides which processes record): planner's
recorder, the phase windows marked from what the libraries do (module forward hooks, ``torch.autograd.backward``,
optimizer step hooks, the DeepSpeed engine's backward and step, DDP's construction), the identity probes, and
the rank's output at the end (rank_output.py).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path
from typing import Any


class Session:
    """One recording process: the recorder, the phase windows, the probes, and the rank's output at the end."""

    def __init__(self, job, rank_dir: Path) -> None:
        self.job = job
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank_dir = rank_dir
        self.step = 0
        self.mb = 0
        self.steps_completed = 0
        self.steps_recorded = 0
        self.window: tuple[str, Any, int] | None = None  # (name, record_function, start ns)
        self.fwd_depth = self.bwd_depth = self.opt_depth = 0
        self.in_bwd_steps = 0  # steps running inside backward (step_begin)
        self.recomputing: list[Any] = []
        self.model = None
        self.optimizer = None
        self.probe_index = 0
        self.done = False
        self.trainer = None  # an HF Trainer seen being built (trainer_hook.py)
        self.error: BaseException | None = None
        self.engine_name = "user command"
        self.started = time.time()

    # ------------------------------------------------------------ start

    def start(self) -> None:
        import torch

        from planner.profile import trainer_hook
        from planner.profile.recorders import CpuRecorder, CudaRecorder

        if self.job.device == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.recorder = CudaRecorder(self.local_rank)
        else:
            self.recorder = CpuRecorder()
            if self.world_size > 1:
                from planner.profile import gloo_settle

                gloo_settle.install()  # before DeepSpeed or the script keep references to the collectives
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        self._install_hooks()
        trainer_hook.install(self)
        atexit.register(self.finish_at_exit)
        previous = sys.excepthook

        def excepthook(kind, value, tb):
            self.error = value
            previous(kind, value, tb)

        sys.excepthook = excepthook
        self.recorder.start()

    def _install_hooks(self) -> None:
        import torch
        from torch.nn.modules import module as module_mod
        from torch.optim import optimizer as optimizer_mod

        module_mod.register_module_forward_pre_hook(self._forward_pre)
        module_mod.register_module_forward_hook(self._forward_post, always_call=True)
        optimizer_mod.register_optimizer_step_pre_hook(lambda opt, args, kwargs: self.step_begin(opt))
        optimizer_mod.register_optimizer_step_post_hook(lambda opt, args, kwargs: self.step_end())
        original_backward = torch.autograd.backward

        def backward(*args, **kwargs):
            self.backward_begin()
            try:
                return original_backward(*args, **kwargs)
            finally:
                self.backward_end()

        torch.autograd.backward = backward
        ddp_init = torch.nn.parallel.DistributedDataParallel.__init__

        def ddp_wrapped(module, *args, **kwargs):
            with self.setup_window("wrap"):
                ddp_init(module, *args, **kwargs)

        torch.nn.parallel.DistributedDataParallel.__init__ = ddp_wrapped

    # ------------------------------------------------------------ windows

    def _open(self, name: str) -> None:
        from torch.profiler import record_function

        from planner.profile.attribution import MARKER_PREFIX

        self._close()
        if self.done:
            return
        rf = record_function(MARKER_PREFIX + name)
        rf.__enter__()
        self.window = (name, rf, time.time_ns())

    def _close(self) -> None:
        from planner.profile.attribution import Window

        if self.window is None:
            return
        name, rf, t0 = self.window
        self.window = None
        rf.__exit__(None, None, None)
        self.recorder.wall_windows.append(Window(name, t0, time.time_ns()))
        self.recorder.on_window_end(name)

    def _phase(self, phase: str, mb: int | None = None) -> None:
        self._open(f"step::{self.step}::{self.mb if mb is None else mb}::{phase}")

    def setup_window(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def window():
            if self.done or self.window is not None:
                yield
                return
            self._open(f"setup::{name}")
            try:
                yield
            finally:
                self._close()

        return window()

    # ------------------------------------------------------------ what the libraries do

    def _forward_pre(self, module, args) -> None:
        if self.done:
            return
        if self.bwd_depth:  # a checkpointed layer's forward re-run inside backward
            if not self.recomputing:
                from torch.profiler import record_function

                from planner.profile.attribution import MARKER_PREFIX

                rf = record_function(MARKER_PREFIX + "recompute")
                rf.__enter__()
                self.recomputing.append((module, rf))
            return
        self.fwd_depth += 1
        if self.fwd_depth == 1:
            if self.model is None:
                self._adopt(module)
            self._phase("forward")

    def _forward_post(self, module, args, output) -> None:
        if self.done:
            return
        if self.bwd_depth:
            if self.recomputing and self.recomputing[-1][0] is module:
                self.recomputing.pop()[1].__exit__(None, None, None)
            return
        if self.fwd_depth == 0:
            return
        self.fwd_depth -= 1
        if self.fwd_depth == 0:
            self._phase("loss")

    def _adopt(self, module) -> None:
        """The outermost module trained: the model for identity; a DeepSpeed engine gets its own windows."""
        self.model = module
        if type(module).__name__ == "DeepSpeedEngine":
            self.engine_name = "deepspeed"
            self.optimizer = getattr(module, "optimizer", None)
            self._wrap_engine(module)
            self._on_gradients_complete(self.optimizer)
        elif type(module).__name__ == "DistributedDataParallel":
            self.engine_name = "ddp"

    def _wrap_engine(self, engine) -> None:
        backward, step = engine.backward, engine.step

        def engine_backward(*args, **kwargs):
            self.backward_begin()
            try:
                return backward(*args, **kwargs)
            finally:
                self.backward_end()

        def engine_step(*args, **kwargs):
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                self.step_begin(None)
            try:
                return step(*args, **kwargs)
            finally:
                if boundary:
                    self.step_end()

        engine.backward, engine.step = engine_backward, engine_step

    def _on_gradients_complete(self, optimizer) -> None:
        """Probe before ZeRO 1/2 copy this rank's partition out of the full gradients (engine.py)."""
        from planner.profile.engine import probe_when_gradients_complete

        probe_when_gradients_complete(optimizer, self.probe)

    def backward_begin(self) -> None:
        if self.done:
            return
        self.bwd_depth += 1
        if self.bwd_depth == 1:
            self.probe()
            self._phase("backward")

    def backward_end(self) -> None:
        if self.done or self.bwd_depth == 0:
            return
        self.bwd_depth -= 1
        if self.bwd_depth == 0:
            while self.recomputing:
                self.recomputing.pop()[1].__exit__(None, None, None)
            self._close()
            self.probe()
            self.mb += 1
            self._phase("inputs")

    def step_begin(self, optimizer) -> None:
        if self.done:
            return
        if self.bwd_depth and not self.opt_depth:  # --optimizer-in-backward: a gradient hook's step is backward
            self.in_bwd_steps += 1
            return
        self.opt_depth += 1
        if self.opt_depth == 1:
            if optimizer is not None and self.engine_name != "deepspeed":
                self.optimizer = optimizer
            self._phase("optimizer_step", max(self.mb - 1, 0))

    def step_end(self) -> None:
        if self.in_bwd_steps:
            self.in_bwd_steps -= 1
            return
        if self.done or self.opt_depth == 0:
            return
        self.opt_depth -= 1
        if self.opt_depth:
            return
        self._close()
        self.probe()
        self.step += 1
        self.mb = 0
        self.steps_completed = self.step
        if self.step >= self.job.steps:
            self.finish("ok", "")
            if self.trainer is None:  # a plain loop: nothing would stop it
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            return
        self._phase("inputs")

    def probe(self) -> None:
        if self.done or self.model is None:
            return
        from planner.profile import identity

        found = identity.collect(self.model, self.optimizer)
        # TRL's trainers keep a frozen reference model beside the policy (DPOTrainer.ref_model): its weights
        # are parameters too (planner/estimate/posttrain.py counts them in params)
        ref = getattr(self.trainer, "ref_model", None)
        if ref is not None and ref is not self.model:
            found["params"] = sorted(set(found["params"]) | set(identity.collect(ref, None)["params"]))
        self.recorder.probe(self.probe_index, found)
        self.probe_index += 1

    def grad_born(self, param) -> None:
        if not self.done and param.grad is not None:
            from planner.profile.identity import storage_ptr

            self.recorder.probe(self.probe_index, {"grads": [storage_ptr(param.grad)]})
            self.probe_index += 1

    # ------------------------------------------------------------ the end

    def finish_at_exit(self) -> None:
        if self.done:
            return
        if self.model is None and self.error is None:
            # Never ran a forward: a helper process of the command (a launcher's ``python -c``), not a rank;
            # writing would clobber the real rank's recording.
            self.done = True
            self.recorder.stop()
            return
        from planner.profile.runner import _first_line, _is_oom

        err = self.error
        if err is not None:
            status = "oom" if _is_oom(err) else "failed"
            message = f"rank {self.rank} failed at step {self.step}: {type(err).__name__}: {_first_line(err)}."
        else:
            status = "failed"
            message = (f"rank {self.rank}'s command ended after {self.steps_completed} of {self.job.steps} optimizer "
                       f"steps.")
        self.finish(status, message)

    def finish(self, status: str, message: str) -> None:
        """Stop recording, attribute, write ``rank<r>.json`` and the timeline (rank_output.py)."""
        if self.done:
            return
        while self.recomputing:
            self.recomputing.pop()[1].__exit__(None, None, None)
        self._close()
        facts: dict[str, Any] = {}
        if self.model is not None:
            from planner.profile.identity import param_storage_bytes, reachable_ptrs

            params = list(self.model.parameters())
            facts = {"param_storage_bytes": param_storage_bytes(self.model), "num_params": sum(p.numel() for p in params),
                     "num_trainable_params": sum(p.numel() for p in params if p.requires_grad)}
            if self.job.device == "cpu" and (self.world_size > 1 or self.engine_name == "deepspeed"):
                # every live tensor is reachable now (no autograd graph): frees gloo hid can be inferred
                self.recorder.liveness(0, reachable_ptrs())
        self.done = True
        recording = self.recorder.stop()
        self.steps_recorded = self.steps_completed
        facts["failed_at_unix_ns"] = time.time_ns() if status != "ok" else None
        from planner.profile.rank_output import RankOutput

        out = RankOutput()
        out.job, out.rank, out.rank_dir, out.recorder = self.job, self.rank, self.rank_dir, self.recorder
        out.steps_completed, out.steps_recorded = self.steps_completed, self.steps_recorded
        self.model = self.optimizer = None
        out._finish(recording, status, message, facts, self.engine_name, time.time() - self.started)
