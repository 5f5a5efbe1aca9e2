"""Synthetic profile timelines for the report tests, in the schema of planner.report.timeline.

Shaped like a real training step: the forward pass grows activations, the loss adds a temporary spike,
the backward pass frees activations while gradients appear, and the optimizer step allocates its states
(from step 0 on) and a scratch spike. Deterministic for a given seed; a few steps carry a planted spike
so tests can check that downsampling keeps every step's peak.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PHASES = ("forward", "loss", "backward", "optimizer_step")
MIB = 2**20


def synthetic_timeline(
    num_ranks: int, num_steps: int, samples_per_phase: int = 12, *, seed: int = 0, cuda: bool = False
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = samples_per_phase
    per_step = len(PHASES) * k
    n = num_steps * per_step
    step = np.repeat(np.arange(num_steps), per_step)
    phase_idx = np.tile(np.repeat(np.arange(len(PHASES)), k), num_steps)
    within = np.tile(np.tile(np.linspace(0.0, 1.0, k), len(PHASES)), num_steps)
    frames = []
    for rank in range(num_ranks):
        params = np.full(n, 96 * MIB, dtype=np.int64)
        act_fwd = within * 64 * MIB
        act = np.select([phase_idx == 0, phase_idx == 1, phase_idx == 2], [act_fwd, 64 * MIB, (1 - within) * 64 * MIB], 0)
        grads = np.select([phase_idx == 2, phase_idx == 3], [within * 96 * MIB, 96 * MIB], 0)
        grads = np.where((step > 0) & (phase_idx < 2), 0, grads)
        opt = np.where((step > 0) | (phase_idx == 3), 192 * MIB, 0)
        temp = np.where(phase_idx == 1, np.sin(within * np.pi) * 24 * MIB, 0)
        temp = temp + np.where(phase_idx == 3, np.sin(within * np.pi) * 16 * MIB, 0)
        noise = rng.integers(0, 2 * MIB, n)
        temp = temp + noise
        # Planted one-sample spikes: downsampling must keep them (each is its step's peak).
        spikes = rng.choice(n, size=max(1, num_steps // 50), replace=False)
        temp[spikes] += (40 + rank) * MIB
        frame = pd.DataFrame({
            "rank": np.full(n, rank, dtype=np.int32),
            "t_s": np.arange(n, dtype=np.float64) * 0.002 + rank * 1e-4,
            "phase": pd.Categorical.from_codes(phase_idx, categories=list(PHASES)),
            "step": step.astype(np.int32),
            "params": params,
            "grads": grads.astype(np.int64),
            "optimizer_states": opt.astype(np.int64),
            "activations": act.astype(np.int64),
            "temporaries": temp.astype(np.int64),
            "other": np.full(n, 4 * MIB, dtype=np.int64),
        })
        if cuda:
            total = frame[["params", "grads", "optimizer_states", "activations", "temporaries", "other"]].sum(axis=1)
            frame["reserved"] = (np.maximum.accumulate(total.to_numpy()) // (2 * MIB) + 1) * 2 * MIB
            nvml = frame["reserved"].to_numpy(dtype=np.float64) + 500 * MIB
            nvml[np.arange(n) % 5 != 0] = np.nan  # NVML is sampled on its own, slower clock
            frame["nvml"] = nvml
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
