"""Check the raw prompt table against the contract before anything runs or is written.

Raw contract (WildGuardMix ``wildguardtrain``): ``prompt: str``, ``adversarial: bool``,
``prompt_harm_label: harmful|unharmful|null``, ``response_refusal_label: refusal|compliance|null``,
and optionally ``response_harm_label: harmful|unharmful|null``, ``subcategory: str|null``. Other
columns are ignored. Every failure is one :class:`DataValidationError` naming the file, the column
and the first offending rows (0-based, counted inside that file).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from irr_ray.data.ingest import RawTable
from irr_ray.errors import DataValidationError

PROMPT_LABELS = ("harmful", "unharmful")
LABELS: dict[str, tuple[str, ...]] = {
    "prompt_harm_label": PROMPT_LABELS,
    "response_refusal_label": ("refusal", "compliance"),
    "response_harm_label": ("harmful", "unharmful"),
}
REQUIRED = ("prompt", "adversarial", "prompt_harm_label", "response_refusal_label")
OPTIONAL = ("response_harm_label", "subcategory")
SHOW_ROWS = 5


def _where(table: RawTable, column: str, rows: Sequence[int], what: str, values: Sequence[object] = ()) -> str:
    """'<file>: column `c` <what> at rows 3, 9 (...)' for the first file holding an offending row."""
    located = [table.locate(int(r)) for r in rows]
    first_file = located[0][0]
    in_file = [(r, v) for (f, r), v in zip(located, list(values) or [None] * len(rows)) if f == first_file]
    shown = ", ".join(f"{r} ({v!r})" if values else str(r) for r, v in in_file[:SHOW_ROWS])
    more = len(rows) - min(len(in_file), SHOW_ROWS)
    tail = f" and {more} more" if more else ""
    return f"{first_file}: column `{column}` {what} at rows {shown}{tail}"


def _is_missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy()


def _check_strings(table: RawTable, column: str, nullable: bool) -> None:
    values = table.frame[column]
    missing = _is_missing(values)
    if not nullable and missing.any():
        raise DataValidationError(_where(table, column, np.flatnonzero(missing), "is empty (null)"))
    not_str = ~missing & ~values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if not_str.any():
        bad = np.flatnonzero(not_str)
        raise DataValidationError(
            _where(table, column, bad, "must hold strings, found " + type(values.iloc[bad[0]]).__name__,
                   values.iloc[bad].tolist()))


def _check_bool(table: RawTable, column: str) -> None:
    values = table.frame[column]
    if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
        return
    ok = values.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise DataValidationError(
            _where(table, column, bad, f"must be true/false (found dtype {values.dtype})", values.iloc[bad].tolist()))


def _check_labels(table: RawTable, column: str) -> None:
    _check_strings(table, column, nullable=True)
    values = table.frame[column]
    allowed = LABELS[column]
    unknown = ~_is_missing(values) & ~values.isin(allowed).to_numpy(dtype=bool)
    if unknown.any():
        bad = np.flatnonzero(unknown)
        raise DataValidationError(
            _where(table, column, bad, f"has unknown labels (allowed: {', '.join(allowed)} or null)",
                   values.iloc[bad].tolist()))


def validate_raw(table: RawTable, unknown_prompt_labels: str) -> None:
    """Raise :class:`DataValidationError` on the first contract violation; return None if clean.

    ``prompt_harm_label`` is what the stage filters on (it keeps harmful/unharmful rows), so other
    string values there are dropped with the nulls when ``unknown_prompt_labels="drop"`` (counted in
    the manifest) and are an error when ``"error"``. Unknown values in the other label columns are
    always an error.
    """
    frame = table.frame
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12])) or "none"
        raise DataValidationError(
            f"{table.name}: missing required column(s) {', '.join(missing)} (found: {found})")
    if len(frame) == 0:
        raise DataValidationError(f"{table.name}: no rows")
    _check_strings(table, "prompt", nullable=False)
    _check_bool(table, "adversarial")
    for column in LABELS:
        if column not in frame.columns:
            continue
        if column == "prompt_harm_label" and unknown_prompt_labels == "drop":
            _check_strings(table, column, nullable=True)
        else:
            _check_labels(table, column)
    if "subcategory" in frame.columns:
        _check_strings(table, "subcategory", nullable=True)


def check_classes(counts: dict[str, int], where: str, step: str) -> None:
    """Both prompt classes must survive ``step``; otherwise the study has nothing to contrast."""
    empty = [c for c in PROMPT_LABELS if counts.get(c, 0) == 0]
    if empty:
        shown = ", ".join(f"{c}={counts.get(c, 0)}" for c in PROMPT_LABELS)
        raise DataValidationError(
            f"{where}: column `prompt_harm_label` has no {' and no '.join(empty)} rows after {step} "
            f"({shown}); both classes are needed")
