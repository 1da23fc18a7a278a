"""Formatting shared by the HTML report and the model card.
"""

from __future__ import annotations

import html


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def interval(bounds) -> str:
    return f"{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%" if bounds else "-"
