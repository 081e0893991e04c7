"""Row readers for JSONL and Parquet, each row tagged with where it came from, and the malformed-row policy.

A bad row is reported as `file:line` (JSONL) or `file:row` (Parquet) with the reason; `on_error="skip"` counts it
and goes on, `on_error="raise"` stops with that message. Nothing crashes deep inside training."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


class DataError(ValueError):
    pass


@dataclass
class Row:
    data: Any
    where: str            # "path:line 12" / "path:row 3"


@dataclass
class ErrorLog:
    on_error: str = "raise"            # "raise" | "skip"
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: expected 'raise' or 'skip', got {self.on_error!r}")

    def report(self, where: str, reason: str) -> None:
        msg = f"{where}: {reason}"
        if self.on_error == "raise":
            raise DataError(msg)
        self.skipped.append(msg)


def read_rows(path: str | Path, errors: ErrorLog) -> Iterator[Row]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow is a dependency
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        for i, rec in enumerate(pq.read_table(path).to_pylist()):
            yield Row(rec, f"{path}:row {i}")
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Row(json.loads(line), f"{path}:line {n}")
            except json.JSONDecodeError as e:
                errors.report(f"{path}:line {n}", f"not valid JSON ({e.msg})")


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    """Write a dataset atomically (temp file + rename)."""
    import os
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
