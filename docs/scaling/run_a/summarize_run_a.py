"""docs/scaling/run_a/summary.csv from run A's CSVLogger files.

    python docs/scaling/run_a/summarize_run_a.py docs/scaling/run_a

The probe's summary was lost to an on_fit_end crash in run A's 2-GPU runs (see
docs/scaling.md), so run A's numbers come from what the task's TrainingMonitor logged:
tokens/s = mean of the logged ``train/tokens_per_sec`` (all GPUs, 10-step windows) at step >= 19;
peak memory = max of ``train/peak_memory_gib`` (rank 0); val/loss at each epoch end.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(root: Path) -> None:
    out = []
    for run in ["ddp1", "ddp2", "resume_ddp2", "wide_ddp2"]:
        with open(root / run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))

        def col(key: str, rows: list[dict] = rows) -> list[tuple[int, float]]:
            return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]

        tokens = [v for s, v in col("train/tokens_per_sec") if s >= 19]
        out.append(
            {
                "run": run,
                "gpus": 1 if run == "ddp1" else 2,
                "tokens_per_sec_mean": round(sum(tokens) / len(tokens)) if tokens else "",
                "windows": len(tokens),
                "peak_memory_gib_rank0": round(max(v for _, v in col("train/peak_memory_gib")), 4),
                "val_loss_by_step": " ".join(f"{s}:{v:.4f}" for s, v in col("val/loss")),
            }
        )
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    for row in out:
        print(row)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
