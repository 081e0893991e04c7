"""Row readers for JSONL and Parquet, each row tagged with where it came from, and the malformed-row policy.

A bad row is reported as `file:line` (JSONL) or `file:row` (Parquet) with the reason. `on_error` says what then:
"raise" stops at the first bad row; "warn" (the training default) skips it, prints it, and stops the run when the
skipped share of a file exceeds `max_skip_share`; "skip" skips and prints without a limit. Every skip is counted
and a file's summary printed once it is read. Nothing crashes deep inside training."""
from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ON_ERROR = ("raise", "warn", "skip")
MAX_PRINTED = 20            # per file; the rest are counted in the summary


class DataError(ValueError):
    pass


@dataclass
class Row:
    data: Any
    where: str            # "path:line 12" / "path:row 3"


@dataclass
class ErrorLog:
    on_error: str = "raise"            # raise | warn | skip
    max_skip_share: float = 0.1        # "warn": stop when more than this share of a file's rows is skipped
    echo: bool = True                  # print skipped rows and summaries to stderr
    skipped: list[str] = field(default_factory=list)
    _mark: int = 0                     # skipped[_mark:] belong to the file being read

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error: expected one of {list(ON_ERROR)}, got {self.on_error!r}")
        if not 0 <= self.max_skip_share <= 1:
            raise ValueError(f"max_skip_share: expected a share in [0, 1], got {self.max_skip_share}")

    def report(self, where: str, reason: str) -> None:
        msg = f"{where}: {reason}"
        if self.on_error == "raise":
            raise DataError(msg)
        if self.echo and len(self.skipped) - self._mark < MAX_PRINTED:
            print(f"skipped {msg}", file=sys.stderr)
        self.skipped.append(msg)

    def finish(self, kept: int, source: str | None = None) -> dict[str, Any]:
        """Close one file: print how many rows were skipped and why; raise DataError when the skipped share is
        above `max_skip_share` under "warn". Returns the summary."""
        mine = self.skipped[self._mark:]
        self._mark = len(self.skipped)
        total = kept + len(mine)
        reasons = Counter(_kind(m) for m in mine)
        summary = {"rows": total, "skipped": len(mine), "reasons": dict(reasons)}
        if not mine:
            return summary
        name = source or mine[0].split(":", 1)[0]
        why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        line = f"{name}: skipped {len(mine)} of {total} rows ({why})"
        share = len(mine) / max(1, total)
        if self.on_error == "warn" and share > self.max_skip_share:
            raise DataError(f"{line}: {share:.0%} is above max_skip_share={self.max_skip_share:g} "
                            f"(first: {mine[0]}); fix the data, or set on_error = \"skip\" to train on the rest")
        if self.echo:
            print(line, file=sys.stderr)
        return summary


def _kind(msg: str) -> str:
    """The reason of a 'where: reason' message without its details, for the summary."""
    reason = msg.split(": ", 1)[1] if ": " in msg else msg
    return reason.split(":", 1)[0].split(" (", 1)[0][:60]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl or .parquet file")


def read_rows(path: str | Path, errors: ErrorLog) -> Iterator[Row]:
    path = Path(path)
    _check_file(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow is a dependency
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises its own error types for every kind of bad file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        for i, rec in enumerate(table.to_pylist()):
            yield Row(rec, f"{path}:row {i}")
        return
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:line {n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                errors.report(where, f"not valid UTF-8 (byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                errors.report(where, f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:
                errors.report(where, "not valid JSON (nested too deeply)")
                continue
            yield Row(data, where)


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
