"""Formatting shared by the HTML report, its charts and the model card, and the Jinja2
environment their templates (templates/) render in."""

from __future__ import annotations

import functools
import html
import os


def escape(value) -> str:
    """`value` as text, HTML-escaped (quotes included)."""
    return html.escape(str(value), quote=True)


def percent(value) -> str:
    """A share in [0, 1] as a percentage with one decimal; "-" for None."""
    return "-" if value is None else f"{100 * value:.1f}%"


def interval(bounds) -> str:
    """[low, high] shares as "low-high%"; "-" when there are none."""
    return f"{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%" if bounds else "-"


def score(value) -> str:
    """A score in [0, 1] with 3 decimals; "-" when undefined (None)."""
    return "-" if value is None else f"{value:.3f}"


def size(row: dict) -> str:
    """A format row's "size_bytes" in MB with 2 decimals; "-" when unknown."""
    return f"{row['size_bytes'] / 1e6:.2f} MB" if row.get("size_bytes") else "-"


def latency(row: dict) -> str:
    """A format row's batch-1 latency "median / p90 ms"; "-" when not measured."""
    if row.get("latency_ms_median") is None:
        return "-"
    return f"{row['latency_ms_median']:.2f} / {row['latency_ms_p90']:.2f} ms"


@functools.cache
def templates():
    """The Jinja2 environment of templates/ beside this module: HTML templates (*.html.j2)
    autoescaped, Markdown ones (*.md.j2) not; a missing value is an error (StrictUndefined);
    filters percent, interval, score, size and latency."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
        autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False),
        undefined=jinja2.StrictUndefined, trim_blocks=True)
    environment.filters.update(percent=percent, interval=interval, score=score, size=size,
                               latency=latency)
    return environment
