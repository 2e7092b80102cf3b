"""Every relative link in README.md and docs/**/*.md points at a file or folder that exists.

Pure Python, no project imports: a moved page or a pruned result folder shows up here as a broken link.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the text may wrap onto the next line, the target may carry a "title".
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    files = [REPO / "README.md"] if (REPO / "README.md").exists() else []
    return files + sorted((REPO / "docs").rglob("*.md"))


def relative_links(text: str) -> list[str]:
    """The relative file targets of a Markdown text, without #anchor or ?query."""
    text = FENCE.sub("", text)
    # Code spans may sit inside a link's text ([`file.json`](path)); blank them so that a bracket inside
    # code cannot open or close a link, but keep the link itself.
    text = CODE_SPAN.sub("code", text)
    targets = []
    for match in LINK.finditer(text):
        target = match.group(2)
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        target = target.split("#", 1)[0].split("?", 1)[0]
        if target:
            targets.append(target)
    return targets


def broken_links(md: Path) -> list[str]:
    """The relative links of one Markdown file whose target does not exist."""
    return [f"{md.relative_to(REPO).as_posix()}: {target}"
            for target in relative_links(md.read_text(encoding="utf-8"))
            if not (md.parent / target).exists()]


def test_link_parser():
    text = (
        "see [a](docs/a.md#part), ![img](b.png \"title\"), [multi\nline](c/) and [`code`](d.json?x=1);\n"
        "skip [web](https://example.org), [mail](mailto:x@y.z), [anchor](#here), `[not](a link)`\n"
        "```\n[fenced](nowhere.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md", "b.png", "c/", "d.json"]


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(md: Path):
    broken = broken_links(md)
    assert not broken, f"{len(broken)} broken relative link(s):\n" + "\n".join(broken)
