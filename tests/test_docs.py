"""The documentation's links: every relative link in README.md, docs/*.md, annotations/README.md,
weights/README.md and bench/README.md names a file that exists, and every `#anchor` names a heading of the page
it points to (GitHub's slugs). The README stays a short user's page whose first screen holds the
first command, its output and the tour; no page, tool or bench script names one machine's paths.

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
FIRST_SCREEN_LINES = 50  # what a terminal or a repository page shows before scrolling
FIRST_OUTPUT_MAX_LINES = 12
FIRST_COMMAND = "pip install -e . && python -m detect.train --backbone mobilenet"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'  # .ci/run runs it
TOUR_MIN_PAGES = 6
# One machine's paths: a user's clone has none of them. /tmp/ may stand in a page's code block
# (an example a user runs), not in its prose, and nowhere in a script.
MACHINE_PATH = re.compile(r"/work/|/home/|\.\./shared")
TMP_PATH = re.compile(r"(?<![\w.])/tmp/")


def doc_pages() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    pages += [p for p in (REPO / "annotations" / "README.md", REPO / "weights" / "README.md", REPO / "bench" / "README.md")
              if p.exists()]
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


def fenced_blocks(text: str) -> list[tuple[int, int, list[str]]]:
    """(line of the opening fence, line of the closing fence, the lines between) of every fenced
    code block, 1-based."""
    blocks = []
    fence = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, start, body = match.group(1), number, []
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            blocks.append((start, number, body))
            fence = None
        else:
            body.append(line)
    return blocks


def first_screen_problems(text: str) -> list[str]:
    problems = []
    blocks = fenced_blocks(text)
    command = [i for i, (_, _, body) in enumerate(blocks) if any(FIRST_COMMAND in line for line in body)]
    if not command:
        return [f"no code block holds the first command ({FIRST_COMMAND!r})"]
    i = command[0]
    if blocks[i][1] > FIRST_SCREEN_LINES:
        problems.append(f"the first command ends on line {blocks[i][1]}, past the first screen ({FIRST_SCREEN_LINES} lines)")
    if i + 1 >= len(blocks):
        problems.append("no block after the first command shows its output")
    else:
        start, end, body = blocks[i + 1]
        if end > FIRST_SCREEN_LINES:
            problems.append(f"the first command's output ends on line {end}, past the first screen")
        if len(body) > FIRST_OUTPUT_MAX_LINES:
            problems.append(f"the first command's output (line {start}) has {len(body)} lines (at most {FIRST_OUTPUT_MAX_LINES}): shorten it, the whole output goes to docs/")
        if not any("val mAP@0.5" in line for line in body):
            problems.append(f"the block after the first command (line {start}) does not show the val mAP it reaches")
    screen = "\n".join(text.splitlines()[:FIRST_SCREEN_LINES])
    pages = {target.split("#")[0] for _, target in links_in(screen) if target.startswith("docs/")}
    if len(pages) < TOUR_MIN_PAGES:
        problems.append(f"the first screen links {len(pages)} docs/ pages (at least {TOUR_MIN_PAGES}): the tour, one line per stage with its page, belongs there")
    if TEST_COMMAND not in text:
        problems.append(f"the test command ({TEST_COMMAND!r}, which CI runs) is gone")
    return problems


def links_in(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(text):
        for match in _INLINE_LINK.finditer(line):
            found.append((number, match.group(1)))
    return found


def test_readme_first_screen_holds_the_first_command_its_output_and_the_tour() -> None:
    problems = first_screen_problems((REPO / "README.md").read_text(encoding="utf-8"))
    assert not problems, "README.md's first screen:\n" + "\n".join(problems)


def test_first_screen_check_catches_a_long_output_and_a_late_command() -> None:
    command = f"```bash\n{FIRST_COMMAND}\n```\n"
    tour = "".join(f"- [p{i}](docs/p{i}.md)\n" for i in range(TOUR_MIN_PAGES))
    output = "```\n" + "epoch\n" * 20 + "val mAP@0.5 0.55\n```\n"
    problems = first_screen_problems("# R\n" + command + output + tour + TEST_COMMAND)
    assert len(problems) == 1 and "21 lines" in problems[0], problems
    late = "# R\n" + "text\n" * 60 + command + "```\nval mAP@0.5 0.55\n```\n" + tour + TEST_COMMAND
    problems = first_screen_problems(late)
    assert any("past the first screen" in p for p in problems) and any("links 0 docs/" in p for p in problems), problems
    short = "# R\n" + command + "```\nval mAP@0.5 0.55\n```\n" + tour + TEST_COMMAND
    assert first_screen_problems(short) == []


def machine_path_files() -> list[Path]:
    files = list(doc_pages())
    for folder in ("tools", "bench"):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.is_file() and p.suffix in {".py", ".sh", ".md", ".txt", ""}
                  and "__pycache__" not in p.parts]
    return files


def machine_paths(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(REPO)
    problems = [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]
    if path.suffix == ".md":
        problems += [f"{rel}:{n}: /tmp/ in prose: {line.strip()}" for n, line in prose_lines(text) if TMP_PATH.search(line)]
    else:
        problems += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if TMP_PATH.search(line)]
    return problems


def test_no_page_tool_or_bench_script_names_one_machines_paths() -> None:
    problems = [p for path in machine_path_files() for p in machine_paths(path)]
    assert not problems, "one machine's paths (use arguments, or a path relative to the clone):\n" + "\n".join(problems)


def test_machine_path_check_reads_prose_and_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("# P\n\nData in ../shared/data/bccd, results in /tmp/x.\n\n```bash\ncp a /tmp/b\n```\n"
                    "Home: /home/me/x\n", encoding="utf-8")
    script = tmp_path / "run.sh"
    script.write_text("cd /work/main\nOUT=/tmp/out\necho ok\n", encoding="utf-8")
    assert [p.split(":")[1] for p in machine_paths(page)] == ["3", "8", "3"]
    assert [p.split(":")[1] for p in machine_paths(script)] == ["1", "2"]
