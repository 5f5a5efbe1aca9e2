"""`planner profile`: real short training runs that record every rank's memory timeline.

The only package of planner that runs torch training. Layout, one concern per module:

- ``workload``      the model (transformers from a config dict, peft LoRA, bitsandbytes QLoRA), data, loss
- ``optim``         optimizers, the fp32-master mixed-precision wrapper, the DeepSpeed config
- ``engine``        plain / DDP / DeepSpeed training step behind one interface
- ``offload``       --activation-offload: torch's save_on_cpu around forward and loss, its pack hook marked
- ``identity``      which storages are params, grads, optimizer states (by tensor identity)
- ``recorders``     CPU (torch.profiler) and CUDA (memory history, memory_stats, NVML) recorders
- ``cuda_trace``    parsing of a CUDA memory snapshot into alloc/free events (pure)
- ``gloo_settle``   CPU multi-rank: frees of tensors used in gloo collectives happen where they are recorded
- ``recording``     the data a recorder hands to the replay (pure)
- ``attribution``   replay of alloc/free events into categories, peaks and a timeline (pure)
- ``torch_categories`` optional cross-check with torch.profiler._memory_profiler (private API)
- ``runner``        one rank's run: phases, probes, failure handling
- ``inject``        ``planner profile -- COMMAND``: which processes of a user's command record
- ``inject_session`` one recording process of such a command: its windows, probes and output
- ``job``           what a rank is handed (``Job``) and the exceptions that stop it
- ``rank_output``   what a rank writes when its run ends: its timeline and ``rank<r>.json``
- ``launcher``      one rank in-process or N ranks via torchrun; merging; signals
- ``torchrun``      N ranks under torchrun: start, watch start-up, forward signals, kill leftovers, read ranks
- ``run_summary``   the run's record (command, specs, workload, versions) and its overall status
- ``worker``        the torchrun entry point of one rank
- ``meta``          versions, hardware, git commit
- ``progress``      the progress bar
- ``store``         atomic profile directories and ``load_profile`` (no torch import)

Importing this package does not import torch: ``load_profile`` is usable by ``compare`` and reports.
"""

from __future__ import annotations

from planner.profile.store import Profile, RankProfile, load_profile

__all__ = ["Profile", "RankProfile", "load_profile"]
