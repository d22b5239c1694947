"""The documentation's links: every relative link in README.md, docs/*.md, annotations/README.md
and weights/README.md names a file that exists, and every `#anchor` names a heading of the page
it points to (GitHub's slugs). And the README stays a short user's page.

Reads files only: no torch, no package import, so it runs anywhere in a fraction of a second.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 260


def doc_pages() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    pages += [p for p in (REPO / "annotations" / "README.md", REPO / "weights" / "README.md") if p.exists()]
    return pages


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INDENTED_CODE = re.compile(r"^(?: {4}|\t)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target may be <...> and may carry a "title".
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks, inline code removed."""
    out = []
    fence = None
    previous_blank = True
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            previous_blank = False
            continue
        if match:
            fence = match.group(1)
            continue
        if previous_blank and _INDENTED_CODE.match(line) and line.strip():
            # An indented code block starts after a blank line (list continuations are
            # indented too, but they never start right after one with 4 spaces of code).
            continue
        previous_blank = not line.strip()
        out.append((number, _INLINE_CODE.sub("", line)))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in _INLINE_LINK.finditer(line):
            found.append((number, match.group(1)))
        match = _REFERENCE_DEF.match(line)
        if match:
            found.append((number, match.group(1)))
    return [(n, t[1:-1] if t.startswith("<") and t.endswith(">") else t) for n, t in found]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercased, punctuation other than
    hyphens, underscores and spaces dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page has: its headings' slugs (a repeated slug gets -1, -2, ... as on
    GitHub) and explicit <a name=...> / id=... anchors."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines_with_code_headings(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
        out.update(_HTML_ANCHOR.findall(line))
    return out


def prose_lines_with_code_headings(text: str) -> list[tuple[int, str]]:
    """Lines outside code blocks, inline code kept (a heading's `code` is part of its slug)."""
    keep = {number for number, _ in prose_lines(text)}
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if n in keep]


def is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None or target.startswith("//")


def broken_links(page: Path) -> list[str]:
    problems = []
    rel = page.relative_to(REPO)
    for number, target in links(page):
        if not target or is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        if file_part.startswith("/"):
            dest = REPO / file_part.lstrip("/")
        elif file_part:
            dest = (page.parent / file_part).resolve()
        else:
            dest = page
        where = f"{rel}:{number}: {target}"
        try:
            dest.relative_to(REPO)
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file {dest.relative_to(REPO)}")
            continue
        if anchor and dest.suffix.lower() == ".md":
            if unquote(anchor).lower() not in anchors(dest):
                problems.append(f"{where}: no heading in {dest.relative_to(REPO)} has the anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_pages_exist() -> None:
    assert (REPO / "docs").is_dir() and list((REPO / "docs").glob("*.md")), "docs/ holds no pages"


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): it is the user's page; "
        "move details to docs/"
    )


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Two commands", "two-commands"),
        ("Many GPUs: torchrun", "many-gpus-torchrun"),
        ("What is written, and how", "what-is-written-and-how"),
        ("Ctrl-C, NaN losses and usage errors", "ctrl-c-nan-losses-and-usage-errors"),
        ("Training: `python -m detect.train`", "training-python--m-detecttrain"),
        ("VOC6xx: anchor fit (needs torch)", "voc6xx-anchor-fit-needs-torch"),
        ("`detect/common/`: the bottom", "detectcommon-the-bottom"),
        ("snake_case stays", "snake_case-stays"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_checker_finds_a_broken_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks themselves: a missing file and a missing anchor are caught, code is not read."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Some section\n\ntext\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# R\n\n"
        "[ok](docs/a.md) [ok](docs/a.md#some-section) [ok](#r) [web](https://example.com/x.md)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#no-such)\n"
        "`[code](docs/c.md)`\n\n"
        "```\n[fenced](docs/d.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "docs/b.md" in problems[0] and "#no-such" in problems[1]
