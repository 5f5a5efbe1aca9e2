"""GRPO's generation: whether to colocate a vLLM engine beside the trainer or generate with transformers, and why.

The same plan is estimated three ways (estimate/grpo.py): transformers' ``model.generate`` in the trainer (its KV
cache while generating), and vLLM colocated (trl/generation/vllm_generation.py ``VLLMGeneration``: ``LLM(...,
gpu_memory_utilization=u)`` in the trainer's process, its share held through training, or with
``vllm_enable_sleep_mode`` released while training). The words say which fits under the usable capacity and which
planner advises: vLLM colocated with sleep mode where it fits (vLLM's paged KV cache and batched decoding generate
far faster than ``model.generate``, which dominates a GRPO step's time; planner's time model does not count
generation, so that reason is stated, not computed), else transformers.
"""

from __future__ import annotations

from dataclasses import replace

from planner.estimate.core import estimate
from planner.specs import Cluster, Generation, GrpoSpec, ModelSpec, TaskSpec, TrainSpec
from planner.specs.grpo import DEFAULT_VLLM_MEMORY_UTILIZATION
from planner.units import fmt_gib


def _with(train: TrainSpec, generation: Generation, sleep: bool) -> TrainSpec:
    g = train.task.grpo
    vllm = generation is Generation.VLLM_COLOCATE  # GrpoSpec refuses vLLM's settings with transformers generation
    grpo = GrpoSpec(num_generations=g.num_generations, completion_len=g.completion_len, beta=g.beta,
                    generation=generation, vllm_sleep=sleep and vllm,
                    vllm_memory_utilization=g.vllm_memory_utilization if vllm else DEFAULT_VLLM_MEMORY_UTILIZATION)
    return replace(train, task=TaskSpec(train.task.kind, train.task.reference, grpo))


def generation_advice(model: ModelSpec, train: TrainSpec, cluster: Cluster, margin: float) -> list[str]:
    """One line for a GRPO plan (none for other tasks): where to generate, with the device peaks behind it."""
    g = train.task.grpo
    if g is None:
        return []
    peaks = {}
    for key, generation, sleep in (("transformers", Generation.TRANSFORMERS, False),
                                   ("vllm-sleep", Generation.VLLM_COLOCATE, True),
                                   ("vllm-held", Generation.VLLM_COLOCATE, False)):
        est = estimate(model, _with(train, generation, sleep), cluster, margin=margin)
        peaks[key] = (est.device_bytes, est.gpu_fits, est.usable_bytes)
    usable = peaks["transformers"][2]
    share = int(cluster.gpu.capacity_bytes * g.vllm_memory_utilization)

    def says(key: str) -> str:
        peak, fits, _ = peaks[key]
        return f"{fmt_gib(peak)}{'' if fits else ' (does not fit)'}"

    head = (f"Generation: device peak with transformers' generate {says('transformers')}; vLLM colocated at "
            f"gpu_memory_utilization {g.vllm_memory_utilization:g} ({fmt_gib(share)} of the GPU) "
            f"{says('vllm-sleep')} with sleep mode, {says('vllm-held')} with its share held through training "
            f"({fmt_gib(usable)} usable). ")
    if peaks["vllm-sleep"][1]:
        advice = ("Colocate vLLM with sleep mode (--generation vllm-colocate --vllm-sleep; GRPOConfig use_vllm, "
                  "vllm_mode colocate, vllm_enable_sleep_mode): its paged KV cache and batched decoding generate much "
                  "faster than model.generate, which takes most of a GRPO step, and sleep mode hands its share back "
                  "before training (planner's time model does not count generation yet).")
        if peaks["vllm-held"][1]:
            advice += " Without sleep mode it fits too and skips the wake-up's reload each step."
    else:
        advice = ("Generate with transformers in the trainer: vLLM's share does not fit beside the trainer even with "
                  "sleep mode; lower --vllm-memory-utilization, or give vLLM its own GPUs (vllm_mode server, not "
                  "modelled).")
    return [head + advice]
