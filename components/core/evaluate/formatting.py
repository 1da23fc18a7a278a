"""Formatting shared by the HTML charts and the model card."""

from __future__ import annotations

import html


def escape(value) -> str:
    """`value` as text, HTML-escaped (quotes included)."""
    return html.escape(str(value), quote=True)


def percent(value) -> str:
    """A share in [0, 1] as a percentage with one decimal; "-" for None."""
    return "-" if value is None else f"{100 * value:.1f}%"


def interval(bounds) -> str:
    """[low, high] shares as "low-high%"; "-" when there are none."""
    return f"{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%" if bounds else "-"
