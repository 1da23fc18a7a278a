"""Self-contained SVG charts and image thumbnails for the HTML report."""

from __future__ import annotations

import base64
import io

import numpy as np

from components.core.evaluate.formatting import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def thumbnail(image: np.ndarray, side: int = 96) -> str:
    """A uint8 RGB image (H, W, 3) as a PNG data URI, at most `side` pixels on its longer side."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def line_chart(series: dict, title: str, x_label: str, width: int = 440,
               height: int = 240) -> str:
    """An inline SVG line chart of `series` ({name: (xs, ys)}); empty series are left out."""
    series = {name: (list(xs), list(ys)) for name, (xs, ys) in series.items() if len(xs)}
    if not series:
        return f"<p class='muted'>{escape(title)}: no data</p>"
    xs = [x for x_values, _ in series.values() for x in x_values]
    ys = [y for _, y_values in series.values() for y in y_values]
    left, right, top, bottom = 48, 12, 24, 36
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_low, y_high = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def point(x, y):
        return (left + (x - x_low) / (x_high - x_low) * (width - left - right),
                top + (1 - (y - y_low) / (y_high - y_low)) * (height - top - bottom))

    parts = [f"<svg role='img' aria-label='{escape(title)}' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' xmlns='http://www.w3.org/2000/svg'>",
             f"<text x='{left}' y='14' class='title'>{escape(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' "
             f"height='{height - top - bottom}' fill='none' stroke='#ccc'/>",
             f"<text x='{left}' y='{height - 6}' class='axis'>{escape(x_label)} "
             f"{x_low:g}-{x_high:g}</text>",
             f"<text x='4' y='{top + 10}' class='axis'>{y_high:.3g}</text>",
             f"<text x='4' y='{height - bottom}' class='axis'>{y_low:.3g}</text>"]
    for index, (name, (x_values, y_values)) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in map(point, x_values, y_values))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' "
                     f"points='{path}'/>")
        parts.append(f"<text x='{width - right - 110}' y='{top + 14 + 14 * index}' "
                     f"fill='{colour}' class='axis'>{escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def reliability_chart(bins: list, width: int = 300, height: int = 260) -> str:
    """An inline SVG reliability diagram: accuracy per confidence bin against the diagonal."""
    side = min(width, height) - 50
    left, top = 40, 20
    parts = [f"<svg role='img' aria-label='reliability diagram' width='{width}' "
             f"height='{height}' xmlns='http://www.w3.org/2000/svg'>",
             f"<rect x='{left}' y='{top}' width='{side}' height='{side}' fill='none' "
             f"stroke='#ccc'/>",
             f"<line x1='{left}' y1='{top + side}' x2='{left + side}' y2='{top}' "
             f"stroke='#999' stroke-dasharray='4'/>"]
    for entry in bins:
        x = left + entry["lower"] * side
        bar = entry["accuracy"] * side
        parts.append(f"<rect x='{x:.1f}' y='{top + side - bar:.1f}' "
                     f"width='{(entry['upper'] - entry['lower']) * side - 1:.1f}' "
                     f"height='{bar:.1f}' fill='#1f77b4' opacity='0.8'>"
                     f"<title>{entry['count']} images, confidence {entry['confidence']:.2f}, "
                     f"accuracy {entry['accuracy']:.2f}</title></rect>")
    parts.append(f"<text x='{left}' y='{top + side + 16}' class='axis'>confidence 0-1</text>"
                 f"<text x='2' y='{top + 10}' class='axis'>acc</text></svg>")
    return "".join(parts)
