"""The ingest step's data report (Markdown): counts, skipped and converted files, label
conflicts; every file and class name escaped for Markdown.
"""

from __future__ import annotations

import re
import unicodedata

from components.core.data.discovery import SPLITS


def render_data_report(manifest: dict) -> str:
    """The ingest step's validation report (Markdown): counts per class and split, imbalance,
    image sizes, and every file skipped, converted, renamed-worthy or left out of test."""
    classes, counts = manifest["classes"], manifest["counts"]
    splits = [split for split in SPLITS if split in counts]
    sizes = manifest["image_sizes"]
    lines = [f"# Data report: {_md_text(manifest['source'])}", "",
             f"Fingerprint `{manifest['fingerprint']}` (same files and seed, same fingerprint).",
             "", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits),
             *[f"| {_md_text(label)} | " + " | ".join(str(counts[s][label]) for s in splits)
               + " |"
               for label in classes],
             "| **all** | " + " | ".join(str(sum(counts[s].values())) for s in splits) + " |",
             "", f"Class imbalance (largest / smallest training class): "
                 f"{manifest['imbalance_ratio']}",
             f"Image sizes (pixels): width {sizes['min_width']}-{sizes['max_width']} (median "
             f"{sizes['median_width']}), height {sizes['min_height']}-{sizes['max_height']} "
             f"(median {sizes['median_height']})"]
    sections = (
        ("Skipped", manifest["skipped"], "reason"),
        ("Converted to 8-bit RGB", manifest["converted"], "conversion"),
        ("Left out of the test split", manifest.get("excluded_from_test", []), "reason"))
    for title, entries, key in sections:
        lines += ["", f"## {title}: {len(entries)}", ""]
        lines += [f"- {_md_code(entry['path'])}: {_md_text(entry[key])}" for entry in entries]
    few = manifest.get("few_colours", [])
    lines += ["", f"## Possible placeholders or graphics (at most 64 colours): {len(few)}", "",
              "Kept; look at them: a photo has thousands of colours.", ""]
    lines += [f"- {_md_code(entry['path'])}: {entry['colours']} colours" for entry in few[:50]]
    if len(few) > 50:
        lines.append(f"- ... and {len(few) - 50} more (manifest.json lists them all)")
    conflicts = manifest["label_conflicts"]
    lines += ["", f"## Same image under different classes: {len(conflicts)}", ""]
    lines += [f"- {', '.join(_md_code(path) for path in c['paths'])}" for c in conflicts]
    odd = manifest.get("odd_names", [])
    lines += ["", f"## File names with spaces or other special characters: {len(odd)}",
              "", "Read as they are; listed because other tools may trip on them.", ""]
    lines += [f"- {_md_code(path)}" for path in odd]
    return "\n".join(lines) + "\n"


def _visible(text: str) -> str:
    """`text` with control characters (a newline in a file name, say) written as escapes."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char
                   for char in str(text))


def _md_text(text) -> str:
    """Plain text inside one Markdown line or table cell: control characters escaped, pipes and
    the characters Markdown reads as inline markup there backslash-escaped."""
    return re.sub(r"([\\`*_\[\]<|])", r"\\\1", _visible(text))


def _md_code(text) -> str:
    """A file name as inline code: control characters escaped, and a backtick fence longer
    than any run of backticks in the name (CommonMark), padded when it starts or ends with one."""
    shown = _visible(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"
