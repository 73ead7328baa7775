"""The evaluator's HTML report: one self-contained page with the score, its tables, the plots and every value.

The page has no external link, script or style sheet: the plots are embedded as base64 PNG, so it can be
mailed or archived as one file. Its tables are those printed on screen (calogan.metrics.tables) and its last
section lists every scalar of the JSON under its key path, written as the JSON writes it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calogan.core.runtime import json_text
from calogan.metrics.tables import (
    STRICTER_NOTE,
    STRICTER_TITLE,
    format_physics_table,
    score_note,
    score_rows,
    stricter_rows,
)

#: Plots per split, in the page's order, with their captions; other PNGs found follow under their file names.
FIGURES = (
    ("{split}_showers.png", "Showers for identical conditions: real (top) vs generated (bottom)"),
    ("{split}_statistics.png", "The 24 physical statistics of the competition metric, real vs generated"),
    ("{split}_energy_response.png", "Energy response and resolution per |p| bin"),
    ("{split}_prd.png", "PRD curves of the competition score"),
    ("extra_{split}/classifier_roc.png", "Classifier two-sample tests: ROC curves"),
    ("extra_{split}/separation_power.png", "Separation power per observable"),
)
_LONG_LIST = 8  # numeric lists longer than this (ROC curves) are plotted, not listed

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
pre { background: #f6f6f6; padding: 0.6em; font-size: 0.85em; }
figure { margin: 1em 0; } img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""


def _table(header: list[str], rows: list[tuple[str, list[str | None]]]) -> str:
    """An HTML table: a header row, then one labelled row of cells each."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{html.escape(c or 'n/a')}</td>" for c in cells)
        + "</tr>"
        for label, cells in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _json_scalar(value: Any) -> str:
    """A scalar as the JSON writes it (NaN and infinities as Python's json does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value)


def flatten_scalars(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, scalar) for every scalar of a JSON-like object; numeric lists longer than 8 are skipped."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from flatten_scalars(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        if len(obj) > _LONG_LIST and all(isinstance(v, (int, float)) for v in obj):
            return
        for i, value in enumerate(obj):
            yield from flatten_scalars(value, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _image(path: Path, caption: str) -> str:
    """A figure with the PNG at ``path`` embedded as base64."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _figures(folder: Path, splits: list[str]) -> str:
    """Every PNG under ``folder``: the known plots of each split in order, then any other."""
    parts, seen = [], set()
    for split in splits:
        parts.append(f"<h3>{html.escape(split)} split</h3>")
        for name, caption in FIGURES:
            path = folder / name.format(split=split)
            if path.is_file():
                parts.append(_image(path, f"{caption} ({split})"))
                seen.add(path)
    rest = [p for p in sorted(folder.rglob("*.png")) if p not in seen]
    parts += [_image(p, p.relative_to(folder).as_posix()) for p in rest]
    return "\n".join(parts)


def render_report(output: dict, figures: Path | None = None, title: str = "") -> str:
    """The HTML page of an evaluation: ``output`` is the evaluator's JSON ({split: results}, training_stop).

    ``figures`` is a folder of the evaluator's plots (as ``--plots`` writes it), embedded; ``title`` names
    the prediction scored.
    """
    output = json.loads(json_text(output))  # the values exactly as the --json file holds them
    results = {s: r for s, r in output.items() if isinstance(r, dict) and "score" in r}
    splits = list(results)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>calogan evaluation: {html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>calogan evaluation</h1><p>prediction: <code>{html.escape(title)}</code></p>",
        "<h2>Competition score and its real-vs-real ceiling</h2>",
        _table(["", *splits], score_rows(results)),
        f'<p class="note">{html.escape(score_note(results))}</p>',
    ]
    stop = output.get("training_stop")
    if isinstance(stop, dict):
        parts.append(f'<p class="note">training stopped early: {html.escape(json.dumps(stop))}</p>')
    rows = stricter_rows(results)
    parts.append("<h2>Stricter tests</h2>")
    if rows:
        parts += [
            f"<p>{html.escape(STRICTER_TITLE)}</p>",
            _table(["", *splits], rows),
            f'<p class="note">{html.escape(" ".join(s.strip() for s in STRICTER_NOTE))}</p>',
        ]
    else:
        parts.append('<p class="note">none computed (python -m calogan.evaluate --metrics all)</p>')
    for split, r in results.items():
        if "physics" in r:
            parts += [
                f"<h2>Conditional physics, {html.escape(split)} (generated / real, same conditions)</h2>",
                f"<pre>{html.escape(format_physics_table(r['physics']))}</pre>",
            ]
    if figures is not None:
        parts += ["<h2>Plots</h2>", _figures(Path(figures), splits)]
    values = [(key, [_json_scalar(v)]) for key, v in flatten_scalars(output)]
    parts += [
        "<h2>Every value of the JSON</h2>",
        "<details><summary>key path and value, as in --json</summary>",
        _table(["key", "value"], values),
        "</details></body></html>",
    ]
    return "\n".join(parts) + "\n"
