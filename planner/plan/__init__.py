"""Every search over training configurations. Each calls the estimator (planner.estimate.core.estimate), which
computes one configuration and never searches.

- ``fits``          the largest micro-batch and the longest sequence that fit (``estimate_with_fit``)
- ``compare_gpus``  for every catalog GPU x method, the cheapest plan that fits
- ``estimate_cache`` the memoised estimator both searches share, with its lower bounds; the layouts they try
- ``recommend``     the recommender: method, ZeRO stage, offload, checkpointing, attention, batch layout
- ``search``        its bounded branch-and-bound search over layouts and GPU counts
- ``advice``        its words: why the plan won, why each runner-up lost
- ``no_fit``        what would fit when nothing does (more GPUs, a bigger GPU, QLoRA, shorter sequences, ...)
- ``words``         the names advice gives methods and layouts
- ``types``         what the recommender returns (``Recommendation``, ``Alternative``, ``Rejected``) and
                    ``NoPlanFits``; the preference orders. ``Plan`` itself is a spec (planner/specs/plan.py).
"""
