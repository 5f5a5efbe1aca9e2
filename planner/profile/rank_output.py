"""What one rank writes when its run ends, however it ended.

``RankOutput._finish`` attributes the recording (attribution.py), writes the rank's timeline as
``timeline-rank<r>.parquet`` and its summary (status, message, peaks per phase, identity facts, CUDA extras,
files) as ``rank<r>.json``, atomically; on CPU the summary carries the rank's CPU kind (``_cpu_kernels``).
``runner.RankRun`` inherits it.
"""

from __future__ import annotations

import json
from typing import Any

from planner.profile.attribution import attribute


class RankOutput:
    """The end of ``RankRun``: reads its ``job``, ``rank``, ``rank_dir``, ``recorder`` and step counts."""

    def _finish(self, recording, status, message, facts, engine_name, wall_s) -> dict[str, Any]:
        import pandas as pd

        att = attribute(recording)
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        cols = dict(att.timeline)
        cols["rank"] = [self.rank] * len(cols["t_ns"])
        df = pd.DataFrame(cols)
        for c in ("phase", "category", "origin"):
            df[c] = df[c].astype("category")
        timeline_name = f"timeline-rank{self.rank}.parquet"
        df.to_parquet(self.rank_dir / timeline_name, compression="zstd", index=False)
        # The steady-state windows in wall-clock time, for memory_stats rows and NVML samples (CUDA).
        first_steady = 1 if att.steady_state else 0
        steady_windows = [
            w
            for w in self.recorder.wall_windows
            if w.name.startswith("step::") and int(w.name.split("::")[1]) >= first_steady
        ]
        summary = {
            "rank": self.rank,
            "status": status,
            "message": message,
            "steps_completed": self.steps_completed,
            "steps_recorded": self.steps_recorded,
            "engine": engine_name,
            "steady_state": att.steady_state,
            "peak": att.peak.to_dict() if att.peak else None,
            "phases": {k: v.to_dict() for k, v in att.phase_peaks.items()},
            "step_windows": att.step_windows,
            "recorder_peak_bytes": att.recorder_peak_bytes,
            "num_allocations": att.num_allocations,
            "num_unmatched_frees": att.num_unmatched_frees,
            "num_inferred_frees": att.num_inferred_frees,
            "num_comm_markers": len(recording.comm),
            "num_liveness_probes": len(recording.live),
            "identity": {**facts, "identified_bytes_at_last_probe": att.identity_bytes},
            "cuda": self.recorder.extra(steady_windows),
            "torch_categories": (
                self.recorder.torch_categories_at(att.peak.t_ns + att.t_origin_ns)
                if att.peak is not None and hasattr(self.recorder, "torch_categories_at")
                else None
            ),
            "files": [timeline_name, *self.recorder.write_raw(self.rank_dir, self.rank)],
            "wall_s": round(wall_s, 3),
        }
        if self.job.device == "cpu":
            summary["cpu_kernels"] = self._cpu_kernels()
        tmp = self.rank_dir / f"rank{self.rank}.json.tmp"
        tmp.write_text(json.dumps(summary, sort_keys=True))
        tmp.replace(self.rank_dir / f"rank{self.rank}.json")
        return summary

    def _cpu_kernels(self) -> dict[str, Any] | str:
        """This rank's CPU kind, with oneDNN's workspace of every matmul its estimate makes, measured here with
        the rank's threads (cpu_kind.py), so the profile compares offline on any machine."""
        from planner.models import spec_from_config
        from planner.profile.cpu_kind import kernels_for, local_kernels
        from planner.specs import train_spec_from_dict

        try:
            model = spec_from_config(self.job.model_config, "profile", "profile")
            return kernels_for(model, train_spec_from_dict(self.job.train), local_kernels()).to_dict()
        except Exception as exc:  # noqa: BLE001 - the profile stands without it; compare then says so
            return f"unavailable: {type(exc).__name__}: {exc}"
