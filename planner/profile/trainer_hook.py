"""The HF Trainer inside a recorded user command (inject.py): patched construction and a ``TrainerCallback``.

``install`` puts an import hook on ``sys.meta_path`` that, once ``transformers.trainer`` has been executed,
wraps ``Trainer.__init__`` (TRL's ``SFTTrainer`` and every other subclass call it). Each Trainer built then:

- registers a post-accumulate-grad hook on every trainable parameter, before ``train()`` hands the model to
  DeepSpeed or DDP, so each gradient is identified when autograd makes it (ZeRO 1/2 copy small gradients into
  their reduce bucket and drop them during backward; no probe after backward sees them);
- runs ``accelerator.prepare`` (where DDP and ``deepspeed.initialize`` build their buffers) in a
  ``setup::wrap`` window;
- gets ``PlannerCallback``: ``on_train_begin`` opens the first ``inputs`` window, ``on_step_end`` stops
  training (``control.should_training_stop``) once the recording has its optimizer steps.

Forward, loss, backward and the optimizer step are marked by inject.py's hooks, which see the Trainer's model
(DeepSpeed's engine included) like any other.
"""

from __future__ import annotations

import importlib.abc
import sys

TRAINER_MODULE = "transformers.trainer"


def _patch_trainer(module, session) -> None:
    from transformers import TrainerCallback

    trainer_cls = module.Trainer
    if getattr(trainer_cls.__init__, "_planner", False):
        return

    class PlannerCallback(TrainerCallback):
        """Marks the start of training and stops it once planner's recording has its steps."""

        def on_train_begin(self, args, state, control, **kwargs):
            if not session.done and session.window is None:
                session._phase("inputs")
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if session.done:
                control.should_training_stop = True
            return control

    original = trainer_cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        session.trainer = self
        self.add_callback(PlannerCallback())
        for p in self.model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(session.grad_born)
        prepare = self.accelerator.prepare

        def prepare_in_window(*a, **k):
            with session.setup_window("wrap"):
                return prepare(*a, **k)

        self.accelerator.prepare = prepare_in_window

    __init__._planner = True
    trainer_cls.__init__ = __init__


class _PatchingLoader(importlib.abc.Loader):
    """The real loader of ``transformers.trainer``, then the patch."""

    def __init__(self, loader, session) -> None:
        self.loader, self.session = loader, session

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _patch_trainer(module, self.session)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of ``transformers.trainer`` to patch it once executed."""

    def __init__(self, session) -> None:
        self.session = session

    def find_spec(self, fullname, path, target=None):
        if fullname != TRAINER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, self.session)
                return spec
        return None


def install(session) -> None:
    if TRAINER_MODULE in sys.modules:
        _patch_trainer(sys.modules[TRAINER_MODULE], session)
    else:
        sys.meta_path.insert(0, _Finder(session))
