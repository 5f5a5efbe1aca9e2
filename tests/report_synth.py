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


# ---------------------------------------------------------------- a profile directory in the store's format

CATS = ("params", "grads", "optimizer_states", "activations", "temporaries", "other")
TINY_CONFIG = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
}


def events_from_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """The store's event table (one row per category change) from a wide synthetic timeline."""
    parts = []
    for rank, g in wide.groupby("rank", sort=True):
        values = g[list(CATS)].to_numpy(dtype=np.int64)
        deltas = np.diff(values, axis=0, prepend=np.zeros((1, len(CATS)), dtype=np.int64))
        rows, cols = np.nonzero(deltas)
        delta = deltas[rows, cols]
        total = np.cumsum(delta)
        parts.append(pd.DataFrame({
            "t_ns": (g["t_s"].to_numpy()[rows] * 1e9).astype(np.int64),
            "step": g["step"].to_numpy()[rows].astype(np.int64),
            "micro_batch": np.zeros(len(rows), dtype=np.int64),
            "phase": g["phase"].astype(str).to_numpy()[rows],
            "alloc_id": np.arange(len(rows), dtype=np.int64),
            "delta_bytes": delta,
            "category": np.asarray(CATS)[cols],
            "origin": np.full(len(rows), "synthetic"),
            "allocated_bytes": total,
            "rank": np.full(len(rows), rank, dtype=np.int64),
        }))
    events = pd.concat(parts, ignore_index=True)
    for c in ("phase", "category", "origin"):
        events[c] = events[c].astype("category")
    return events


def _peak_dict(g: pd.DataFrame) -> dict:
    total = g[list(CATS)].sum(axis=1).to_numpy()
    i = int(np.argmax(total))
    row = g.iloc[i]
    return {
        "allocated_bytes": int(total[i]), "t_ns": int(row["t_s"] * 1e9), "step": int(row["step"]),
        "micro_batch": 0, "phase": str(row["phase"]),
        "by_category": {c: int(row[c]) for c in CATS}, "detail": {f"{c}/synthetic": int(row[c]) for c in CATS},
    }


def write_profile_dir(path, wide: pd.DataFrame, *, name: str = "tiny-llama", status: str = "ok", message: str = ""):
    """A complete profile directory that ``planner.profile.load_profile`` accepts (sizes and hashes listed)."""
    import hashlib
    import json
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True)
    events_from_wide(wide).to_parquet(path / "timeline.parquet", compression="zstd", index=False)
    ranks = sorted(int(r) for r in wide["rank"].unique())
    steps = int(wide["step"].max()) + 1
    meta = {
        "schema": 1, "model": {"name": name, "source": "synthetic", "config": dict(TINY_CONFIG)},
        "train": {"method": "full", "precision": "fp32", "optimizer": "adamw", "zero_stage": 0, "offload": "none",
                  "micro_batch": 2, "seq_len": 64, "grad_accum": 1, "grad_checkpointing": False,
                  "attn_impl": "sdpa", "dropout": None},
        "cluster": {"gpu": None, "num_gpus": len(ranks), "num_nodes": 1}, "device": "cpu", "steps": steps,
        "versions": {"torch": "synthetic"}, "hardware": {"device_name": "synthetic CPU"},
    }
    (path / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    rank_entries = []
    for rank, g in wide.groupby("rank", sort=True):
        phases = {str(ph): _peak_dict(gp) for ph, gp in g.groupby("phase", observed=True)}
        cuda = None
        if "reserved" in g and "nvml" in g:  # a CUDA run: the peaks memory_stats and NVML report
            cuda = {"steady_reserved_peak_bytes": int(g["reserved"].max()),
                    "nvml_steady_peak_used_bytes": int(g["nvml"].max())}
        rank_entries.append({"rank": int(rank), "status": status, "message": message, "steps_completed": steps,
                             "steady_state": steps >= 2, "peak": _peak_dict(g), "phases": phases, "cuda": cuda,
                             "identity": {}})
    files = {}
    for fname in ("meta.json", "timeline.parquet"):
        data = (path / fname).read_bytes()
        files[fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    summary = {"schema": 1, "complete": True, "status": status, "message": message, "device": "cpu",
               "num_ranks": len(ranks), "steps": steps, "steps_completed": steps, "ranks": rank_entries,
               "files": files}
    (path / "summary.json").write_text(json.dumps(summary, sort_keys=True))
    return path
