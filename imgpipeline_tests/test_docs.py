"""The documents hold together: every link into docs/ reaches a file, and a heading when it names one,
and the README's map lists every document."""

from __future__ import annotations

import re
from pathlib import Path

import imgpipeline

ROOT = Path(imgpipeline.__file__).parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# Markdown that links into docs/: the README, the docs themselves, the deployment guide.
MARKDOWN = [README, *sorted(DOCS.glob("*.md")), ROOT / "deploy" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A doc named by its path from the project root, as messages, comments and code blocks name them.
MENTION = re.compile(r"(?<![\w/.-])docs/[\w.-]+\.md(?:#[\w-]+)?")


def outside_code(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    kept, fenced = [], False
    for line in text.splitlines():
        if re.match(r"\s*```", line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return kept


def prose(text: str) -> str:
    """The text outside fenced code blocks, without inline code."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in outside_code(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated heading's gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_code(path.read_text()):
        if heading := re.match(r"#{1,6} (.*)", line):
            base = slug(heading.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def broken(target: str, folder: Path, here: Path) -> str | None:
    """Why a relative link from `folder` leads nowhere (None when it leads somewhere); an anchor alone
    names a heading of `here`."""
    path, _, anchor = target.partition("#")
    file = (folder / path).resolve() if path else here
    if not file.exists():
        return "no such file"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"no heading #{anchor}"
    return None


def links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (web addresses left out)."""
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


def test_github_anchors():
    assert slug("Is it healthy? `imgpipeline status`") == "is-it-healthy-imgpipeline-status"
    assert slug("Replaying a range with `dagster job launch`") == "replaying-a-range-with-dagster-job-launch"
    assert slug("Partitions, the unit of parallelism") == "partitions-the-unit-of-parallelism"
    assert slug("Dead-letter record") == "dead-letter-record"


def test_every_link_reaches_a_file_and_heading():
    problems, checked = [], 0
    for path in MARKDOWN:
        for target in links(path):
            checked += 1
            reason = broken(target, path.parent, here=path)
            if reason:
                problems.append(f"{path.relative_to(ROOT)}: ({target}): {reason}")
    assert checked >= 20  # the search itself finds links
    assert problems == []


def test_every_doc_named_by_its_path_exists():
    """Messages, comments, settings and code blocks name docs by their path from the project root."""
    sources = [*MARKDOWN, *sorted((ROOT / "imgpipeline").rglob("*.py")), *sorted(ROOT.glob("*.yaml")),
               *sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]
    problems, checked = [], 0
    for path in sources:
        for mention in MENTION.findall(path.read_text(errors="replace")):
            checked += 1
            reason = broken(mention, ROOT, here=path)
            if reason:
                problems.append(f"{path.relative_to(ROOT)}: {mention}: {reason}")
    assert checked >= 10
    assert problems == []


def test_the_readme_map_lists_every_doc():
    text = README.read_text()
    section = text.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    mapped = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(section)}
    assert {p.resolve() for p in DOCS.glob("*.md")} <= mapped
    # each doc opens with its title and a line saying what it covers
    for path in DOCS.glob("*.md"):
        title, blank, opening = path.read_text().split("\n")[:3]
        assert title.startswith("# ") and blank == "" and opening, path.name
