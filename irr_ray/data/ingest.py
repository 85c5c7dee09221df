"""Read the raw prompt table: the gated Hugging Face dataset or a local parquet / jsonl / csv.

A local directory is read as every file of one format in it, in sorted order. Anything unreadable
is a :class:`DataValidationError` naming the file. The hub token comes only from ``HF_TOKEN``
(``datasets`` reads it from the environment); it is never logged or written to a manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from irr_ray.errors import DataValidationError
from irr_ray.utils.files import file_sha256

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class RawTable:
    """The raw rows, where they came from (for error messages) and a hash of their content.

    ``row_starts[i]`` is the first row of ``files[i]`` in ``frame`` (a directory is concatenated).
    """

    frame: pd.DataFrame
    name: str
    content_hash: str
    files: tuple[str, ...]
    row_starts: tuple[int, ...] = (0,)

    def locate(self, row: int) -> tuple[str, int]:
        """Concatenated row number -> (file, row number inside that file), both 0-based."""
        i = max(k for k, start in enumerate(self.row_starts) if start <= row)
        return self.files[i], row - self.row_starts[i]


def _read_file(path: Path) -> pd.DataFrame:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataValidationError(f"{path}: unsupported file type {path.suffix!r} (use parquet, jsonl or csv)")
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        # CSV: keep label strings as strings; pandas parses True/False columns as bool.
        return pd.read_csv(path, keep_default_na=True, na_values=[""])
    except DataValidationError:
        raise
    except Exception as exc:  # any parser failure becomes one line naming the file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(f"{path}: cannot read as {fmt}: {first}") from None


def read_local(path: str | Path) -> RawTable:
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in FORMATS)
        if not files:
            raise DataValidationError(f"{p}: directory holds no parquet, jsonl or csv files")
        kinds = {FORMATS[q.suffix.lower()] for q in files}
        if len(kinds) > 1:
            raise DataValidationError(f"{p}: mixes file types {sorted(kinds)}; keep one format per directory")
    elif p.is_file():
        files = [p]
    else:
        raise DataValidationError(f"{p}: no such file or directory")
    frames = [_read_file(f) for f in files]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    starts = tuple(int(x) for x in pd.Series([0] + [len(f) for f in frames[:-1]]).cumsum())
    return RawTable(frame, str(p), h.hexdigest(), tuple(str(f) for f in files), starts)


def read_hub(dataset: str, config: str, split: str) -> RawTable:
    """``datasets.load_dataset(dataset, config, split=split)``; gated sets need ``HF_TOKEN`` in the env."""
    import datasets  # heavy; only on this path

    name = f"{dataset}[{config}/{split}]"
    token = os.environ.get("HF_TOKEN") or None
    try:
        ds = datasets.load_dataset(dataset, config, split=split, token=token)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "" if token else " (gated dataset: accept its terms on the Hub and export HF_TOKEN)"
        raise DataValidationError(f"{name}: cannot load from the Hugging Face Hub: {first}{hint}") from None
    frame = ds.to_pandas()
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame.astype(str), index=True).values.tobytes())
    return RawTable(frame, name, digest.hexdigest(), (name,))


def read_source(source: str, hf_config: str = "wildguardtrain", hf_split: str = "train") -> RawTable:
    """A local path if it exists, else a Hub dataset id like ``allenai/wildguardmix``."""
    p = Path(source).expanduser()
    looks_local = p.exists() or source.startswith((".", "/", "~")) or p.suffix.lower() in FORMATS
    if looks_local or not _HUB_ID.match(source):
        return read_local(p)
    return read_hub(source, hf_config, hf_split)
