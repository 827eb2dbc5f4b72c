"""The shell blocks of a README section, as a reader would copy them."""

from __future__ import annotations

import re

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


def section_blocks(markdown: str, title: str, language: str = "sh") -> list[str]:
    """The fenced ``language`` blocks under the heading ``title``, in order, up to the next heading of
    the same or a higher level. Lines inside fences are never taken for headings."""
    blocks: list[str] = []
    level: int | None = None
    fence: str | None = None
    taking = False
    current: list[str] = []
    for line in markdown.splitlines():
        if fence is not None:
            if line.strip() == fence:
                if taking:
                    blocks.append("\n".join(current) + "\n")
                fence, taking, current = None, False, []
            elif taking:
                current.append(line)
            continue
        opened = FENCE.match(line)
        if opened:
            fence = opened.group(1)
            taking = level is not None and opened.group(2) == language
            continue
        heading = HEADING.match(line)
        if heading:
            depth = len(heading.group(1))
            if level is not None and depth <= level:
                break
            if level is None and heading.group(2) == title:
                level = depth
    if level is None:
        raise LookupError(f"no section titled {title!r}")
    return blocks
