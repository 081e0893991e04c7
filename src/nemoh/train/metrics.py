"""Metrics: one JSON line per log step (metrics.jsonl), TensorBoard scalars, and a rich progress bar with ETA."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, show_progress: bool = True,
                 enabled: bool = True):
        self.enabled = enabled  # off on all ranks but 0 in a distributed run
        self.progress = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb: SummaryWriter | None = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is optional: pip install tensorboard
            self.tb = None
        self.progress = None
        if show_progress:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.progress is not None and "loss" in metrics:
            self.progress.update(self.task, info=f"loss {metrics['loss']:.4f}")

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()
        self._file.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise ValueError(f"{run_dir}: no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
