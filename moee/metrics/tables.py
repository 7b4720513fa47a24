"""Results tables shaped like the paper's: one row per model, one column per metric.

Tables 2–4 compare methods on one data set each; Table 5 compares ablations of the full model.
:func:`write_tables` writes the same table as Markdown (for reading), JSON (every value,
including per-class accuracies) and CSV (for spreadsheets). Other tables of the project (a
sweep's results) are written by the same pieces: :func:`table_texts` and :func:`write_texts`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from moee.utils import csv_text, write_text

COLUMNS: dict[str, bool] = {
    "FID": False,
    "FVD": False,
    "LPIPS": False,
    "AKD": False,
    "AED": False,
    "Sync-C": True,
    "Sync-D": False,
    "Emotion-Acc": True,
    "AU-MAE": False,
    "ID-Sim": True,
}
"""The table's columns in the paper's order (then the SynthEmo scores): higher is better?"""

_DECIMALS = {"FID": 2, "FVD": 2, "AKD": 2}

Results = Mapping[str, Mapping[str, float]]
"""model name → {column: value}."""


def format_value(column: str, value: float | None) -> str:
    """A cell: ``–`` for a missing or NaN value, else 2 (FID, FVD, AKD) or 3 decimals."""
    if value is None or math.isnan(value):
        return "–"
    decimals = _DECIMALS.get(column, 3)
    return f"{round(value, decimals) + 0.0:.{decimals}f}"  # + 0.0: no "-0.00"


def best_rows(results: Results, exclude: Sequence[str] = ()) -> dict[str, set[str]]:
    """column → names of the rows with the best value (rows in ``exclude`` do not compete;
    a column where fewer than two rows compete, or all of them tie, has no best)."""
    best = {}
    for column, higher in COLUMNS.items():
        values = {name: row[column] for name, row in results.items()
                  if name not in exclude and column in row and not math.isnan(row[column])}
        if len(set(values.values())) > 1:
            top = (max if higher else min)(values.values())
            best[column] = {name for name, value in values.items() if value == top}
    return best


def wins_of(results: Results, model: str, exclude: Sequence[str] = ()) -> dict[str, bool]:
    """column → whether ``model`` is (jointly) best in it among the non-excluded rows."""
    return {column: model in names for column, names in best_rows(results, exclude).items()}


def markdown_table(results: Results, title: str, exclude: Sequence[str] = (),
                   note: str = "") -> str:
    """The table in Markdown, best values in bold (``exclude``: rows that do not compete,
    e.g. ground truth), columns that no row has left out."""
    columns = [c for c in COLUMNS if any(c in row for row in results.values())]
    best = best_rows(results, exclude)
    arrows = [f"{c} {'↑' if COLUMNS[c] else '↓'}" for c in columns]
    rows = []
    for name, row in results.items():
        cells = [f"{name} *(reference)*" if name in exclude else name]
        for column in columns:
            cell = format_value(column, row.get(column))
            cells.append(f"**{cell}**" if name in best.get(column, ()) else cell)
        rows.append(cells)
    table = markdown_grid(["Method", *arrows], rows, right_from=1)
    return f"### {title}\n\n{table}" + (f"\n{note}\n" if note else "")


def markdown_grid(header: Sequence[str], rows: Iterable[Sequence[str]],
                  right_from: int | None = None) -> str:
    """A Markdown table of text cells: the header, the rule, one line per row. Columns from
    index ``right_from`` on are right-aligned (numbers); by default none is."""
    rule = ["---:" if right_from is not None and i >= right_from else "---"
            for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "".join(f"{r}|" for r in rule)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def table_texts(header: Sequence[str], rows: Sequence[Sequence[str]]) -> dict[str, str]:
    """A plain table of text cells as ``{"md": Markdown, "csv": CSV}`` (for :func:`write_texts`)."""
    return {"md": markdown_grid(header, rows),
            "csv": csv_text(list(header), [list(cells) for cells in rows])}


def write_texts(folder: str | Path, name: str, texts: Mapping[str, str]) -> dict[str, Path]:
    """Write ``folder/name.<suffix>`` for each ``{suffix: text}``; returns the paths by suffix."""
    return {suffix: write_text(Path(folder) / f"{name}.{suffix}", text)
            for suffix, text in texts.items()}


def write_tables(results: Results, folder: str | Path, name: str, title: str,
                 exclude: Sequence[str] = (), meta: Mapping[str, object] | None = None,
                 note: str = "") -> dict[str, Path]:
    """Write ``folder/name.{md,json,csv}``; returns the paths by suffix.

    The CSV and JSON hold every value of every row (the Markdown only :data:`COLUMNS`); the
    JSON also the ``title``, the excluded rows and ``meta`` (e.g. the data set and clip count).
    """
    keys = [c for c in COLUMNS if any(c in row for row in results.values())]
    keys += sorted({k for row in results.values() for k in row} - set(keys))
    document = {"title": title, "columns": keys, "reference_rows": list(exclude),
                **(meta or {}), "rows": [{"model": n, **row} for n, row in results.items()]}
    return write_texts(folder, name, {
        "md": markdown_table(results, title, exclude, note),
        "json": json.dumps(document, indent=2),
        "csv": csv_text(["model", *keys], [[model, *(row.get(k, "") for k in keys)]
                                           for model, row in results.items()]),
    })
