"""Report writers: strict JSON, Markdown tables and reports, PNG line plots.

A report is a title and a list of sections ``(heading, body)``, where a body is Markdown text, a
table (a list of dicts with the same keys), or a list of such pieces (``saesteer eval``'s report).
discover's fixed report and plots, rendered from its typed results, are
:mod:`saesteer.refusal.discover.report`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["feature_text", "write_json", "cell", "markdown_table", "write_markdown_report", "plot_lines", "warning_section"]


def _jsonable(o: Any):
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _finite(o: Any):
    # NaN/inf are not JSON (strict parsers reject them): they become null, i.e. "not measured".
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented, strict JSON (tensors, numpy values, paths and objects with ``to_dict``
    allowed; NaN and inf written as null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(obj, default=_jsonable, allow_nan=True))
    p.write_text(json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n")
    return p


def cell(v: Any, digits: int = 3) -> str:
    """``v`` for a Markdown table cell: floats to ``digits`` places, None and NaN as n/a, lists
    joined by commas, ``|`` escaped and newlines flattened."""
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    if v is None:
        return "n/a"
    if isinstance(v, (list, tuple)):
        return ", ".join(cell(x, digits) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub Markdown table of ``rows`` (floats to ``digits`` places; ``None``/NaN as n/a)."""
    if not rows:
        return "_(no rows)_"
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c), digits) for c in cols) + " |")
    return "\n".join(lines)


def _body(body: Any) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, Sequence) and body and all(isinstance(r, Mapping) for r in body):
        return markdown_table(body)
    if isinstance(body, Sequence):
        return "\n\n".join(_body(b) for b in body)
    raise TypeError(f"section body: expected text, a list of dicts, or a list of those, got {type(body).__name__}")


def warning_section(valid: bool, warnings: Sequence[str]) -> list[tuple[str, Any]]:
    """The section a report opens with when its results are not meaningful or it has warnings
    (``[]`` otherwise), for :func:`write_markdown_report`'s ``sections``."""
    if valid and not warnings:
        return []
    heading = "Warnings" if valid else "These results are not meaningful"
    return [(heading, "\n".join(f"- {w}" for w in warnings))]


def write_markdown_report(path: str | Path, title: str, sections: Sequence[tuple[str, Any]]) -> Path:
    """``# title`` then ``## heading`` + body for each section."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{_body(body)}")
    p.write_text("\n\n".join(parts) + "\n")
    return p


def plot_lines(
    path: str | Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    secondary: Mapping[str, Sequence[float]] | None = None,
    secondary_label: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """A line plot of ``series`` (name -> y values over ``x``) saved as PNG; ``secondary`` series go
    on a right-hand axis (e.g. KL next to rates). Uses matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, ys in secondary.items():
            ax2.plot(list(x), list(ys), marker="s", linestyle="--", color="gray", label=name)
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p


def feature_text(f) -> str:
    """A feature for the report: its id, or ``ID@SAE`` for an ``[sae name, id]`` pair (several SAEs)."""
    return f"{f[1]}@{f[0]}" if isinstance(f, (list, tuple)) else str(f)
