"""The documentation resolves: every relative link and anchor of the markdown pages, every docs page
(and quoted section) a code comment cites, the README's test commands as CI runs them, and nothing
that points outside the repository. Plain file reading, no JAX: it runs in well under a second."""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *REPO.glob("*/README.md")])
# Where code cites docs pages (comments, docstrings, scripts) and where nothing may point outside the
# repository. tests/ is left out of the second: a test may use a local copy of the data when present.
CODE_DIRS = ("saliency_jax", "configs", "benchmarks", "launch", "tests", ".ci")
CODE_SUFFIXES = {".py", ".sh", ".sbatch", ""}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# docs/page.md, optionally followed by its section: docs/page.md, "Section title" (the title may wrap
# onto the next line of a comment).
CITATION = re.compile(r"docs/([\w.-]+\.md)(?:,\s*(?:#\s*)?\"([^\"]+)\")?")
OUTSIDE = re.compile(r"\.\./shared|SPEC\.md|SPEC section|shared folder|/w[o]rk/|/r[o]ot/")  # [o]: not itself a path


def _strip_code_blocks(text: str) -> str:
  """The text without fenced code blocks (whose brackets are code, not links)."""
  return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _headings(path: pathlib.Path) -> list[str]:
  return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _strip_code_blocks(path.read_text()),
                                                   flags=re.M)]


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
  text = re.sub(r"[`*_]{2,}|`", "", heading.lower())
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
  anchors, seen = set(), {}
  for heading in _headings(path):
    base = _anchor(heading)
    n = seen.get(base, 0)
    anchors.add(base if n == 0 else f"{base}-{n}")
    seen[base] = n + 1
  return anchors


def _code_files():
  for d in CODE_DIRS:
    for path in sorted((REPO / d).rglob("*")):
      if path.is_file() and path.suffix in CODE_SUFFIXES and path != pathlib.Path(__file__).resolve() \
          and "__pycache__" not in path.parts:
        yield path


def test_the_pages_exist():
  names = {p.relative_to(REPO).as_posix() for p in PAGES}
  for page in ("README.md", "docs/methods.md", "docs/evaluation.md", "docs/running.md", "docs/performance.md",
               "docs/results_notes.md", "configs/README.md"):
    assert page in names, f"{page} is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
  broken = []
  for target in LINK.findall(_strip_code_blocks(page.read_text())):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    path = (page.parent / file_part).resolve() if file_part else page
    if not path.exists():
      broken.append(f"{target}: no file {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
      broken.append(f"{target}: no heading with anchor #{anchor} in {path.relative_to(REPO)}")
  assert not broken, f"{page.relative_to(REPO)} has links that do not resolve:\n" + "\n".join(broken)


def test_code_cites_pages_and_sections_that_exist():
  broken, cited = [], 0
  for path in _code_files():
    for m in CITATION.finditer(path.read_text()):
      cited += 1
      page = REPO / "docs" / m.group(1)
      where = f"{path.relative_to(REPO)}: docs/{m.group(1)}"
      if not page.exists():
        broken.append(f"{where}: no such page")
      elif m.group(2):
        section = " ".join(re.sub(r"\n\s*#", " ", m.group(2)).split())
        if section not in _headings(page):
          broken.append(f"{where}, {section!r}: no such section")
  assert cited > 10, "no docs citations found in the code: the pattern no longer matches how code cites docs"
  assert not broken, "code cites docs that do not exist:\n" + "\n".join(broken)


def test_nothing_points_outside_the_repository():
  hits = []
  for path in [*PAGES, *(p for p in _code_files() if p.relative_to(REPO).parts[0] != "tests")]:
    for n, line in enumerate(path.read_text().splitlines(), 1):
      if OUTSIDE.search(line):
        hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
  assert not hits, "these refer to files outside the repository (docs/ holds the definitions):\n" + "\n".join(hits)


def test_readme_shows_the_commands_ci_runs():
  readme = (REPO / "README.md").read_text()
  commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
              if line.startswith(("python -m pip install -e", "python -m pytest"))]
  assert len(commands) == 3, commands
  for command in commands:
    shown = re.sub(r"^python -m pip", "pip", re.sub(r"\s+--durations=\d+", "", command))
    assert shown in readme, f".ci/run runs {command!r}, but the README does not show {shown!r}"


def test_readme_is_a_front_door():
  lines = len((REPO / "README.md").read_text().splitlines())
  assert lines <= 210, f"README.md has {lines} lines; it links to docs/ pages for the rest (at most 210)"
