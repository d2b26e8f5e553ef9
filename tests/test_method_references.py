"""docs/METHOD.md is in the repository and every citation of it resolves.

Rules (the repository's tracked text files, found with ``git ls-files`` or, outside a git
checkout, a walk from the repository root; no list of files or modules is written here):
- Every section sign in a text file cites docs/METHOD.md, the repository's only numbered
  document (cite another document's section without the sign, e.g. "Sec. 3 of the paper").
  A number ``N`` needs a ``## N.`` heading, ``N.M`` a ``### N.M`` heading in section N; a range
  (``A-B``, ``A–B``, doubled sign) needs both ends and every section between; a sign with no
  number after it is an error.
- No text file names a folder outside the repository: no path into the machine's work area,
  no spec folder kept beside the repository, no relative path that climbs above
  the repository root from the file's own folder; a Markdown link to METHOD.md reaches it.
- docs/METHOD.md has a heading for each topic the code cites it for, under the number the code
  uses (0 notation, 1 neuron, 2 spike and surrogates with LSG, 3 PN loss, 4 DS-ATGO with its
  adaptive threshold and dynamic width, 5 losses with label smoothing and TET, 6 models,
  7 energy, 8 datasets with splits and frames).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "METHOD.md"
SIGN = "\u00a7"
TEXT_SUFFIXES = (".py", ".md", ".ipynb", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml",
                 ".rst", ".sh", ".cc", ".h")
SKIP_DIRS = {".git", "__pycache__", "build", "dist", "workdirs", ".venv", "venv", "node_modules"}
# One citation starting at a section sign: a number, an optional subsection, an optional range.
REFERENCE = re.compile(SIGN + r"{1,2}\s*(\d+)(?:\.(\d+))?"
                       r"(?:\s*(?:-|\u2013|\u2014)\s*" + SIGN + r"?\s*(\d+)(?:\.(\d+))?)?")
# Paths outside the repository (escaped so this file does not match itself).
WORK_AREA = re.compile(r"(?<![\w.~-])/w\u006frk/")
SPEC_FOLDER = re.compile(r"(?<![\w.-])(?:\.\./)*sh\u0061red/")
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+)")
METHOD_LINK = re.compile(r"\]\(([^)\s]*METHOD\.md)(?:#[^)]*)?\)")

# (section, heading pattern, topic): the numbering every citation in the repository relies on.
TOPICS = (
    (0, r"notation", "notation and the time-major layout"),
    (1, r"neuron", "neuron family"),
    (1, r"charge", "charge IF / LIF / PLIF"),
    (1, r"fire", "CF / multi-level firing"),
    (1, r"reset", "soft / hard reset"),
    (2, r"spike", "spike function"),
    (2, r"surrogate famil", "surrogate families"),
    (2, r"cotangent", "the alpha / theta cotangents"),
    (2, r"\bLSG\b", "LSG parametrisation"),
    (3, r"\bPN\b", "PN loss"),
    (4, r"DS-ATGO", "DS-ATGO"),
    (4, r"adaptive threshold", "DS-ATGO adaptive threshold"),
    (4, r"dynamic .*width", "DS-ATGO dynamic width"),
    (5, r"loss", "losses"),
    (5, r"label smoothing", "label smoothing"),
    (5, r"\bTET\b", "TET"),
    (6, r"model", "models"),
    (7, r"energy", "energy model"),
    (8, r"dataset", "datasets"),
    (8, r"split", "published splits"),
    (8, r"frame", "frame binning"),
)


def text_files() -> list[Path]:
  """Tracked (and untracked, not ignored) text files; a walk when git is unavailable."""
  try:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    paths = [REPO / n for n in names]
  except (OSError, subprocess.SubprocessError):
    paths = []
    for root, dirs, files in os.walk(REPO):
      dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
      paths += [Path(root) / f for f in files]
  return [p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file() and not p.is_symlink()
          and not _in_virtualenv(p)]


@functools.lru_cache(maxsize=None)
def _is_virtualenv(directory: Path) -> bool:
  return (directory / "pyvenv.cfg").is_file()


def _in_virtualenv(path: Path) -> bool:
  """Whether ``path`` lies in a virtual environment made inside the checkout (README: ``python3
  -m venv v``): its packages are not the repository's files, whatever the environment's name."""
  return any(_is_virtualenv(REPO / d) for d in path.relative_to(REPO).parents
             if d != Path("."))


def read_text(path: Path) -> str:
  """The file's text; for a notebook, its cells' sources (JSON may escape the sign)."""
  text = path.read_text(encoding="utf-8")
  if path.suffix == ".ipynb":
    cells = json.loads(text).get("cells", [])
    return "\n".join("".join(c.get("source", [])) for c in cells)
  return text


def method_headings(text: str) -> tuple[set[int], set[tuple[int, int]], dict[int, list[str]]]:
  """``(sections, subsections, heading lines per section)`` of METHOD.md's text."""
  sections: set[int] = set()
  subsections: set[tuple[int, int]] = set()
  lines: dict[int, list[str]] = {}
  current = None
  for line in text.splitlines():
    m = re.match(r"## (\d+)\. \S", line)
    if m:
      current = int(m.group(1))
      assert current not in sections, f"METHOD.md: section {current} appears twice"
      sections.add(current)
      lines[current] = [line]
      continue
    m = re.match(r"### (\d+)\.(\d+) \S", line)
    if m:
      n, k = int(m.group(1)), int(m.group(2))
      assert n == current, f"METHOD.md: '{line}' is not inside section {n}"
      subsections.add((n, k))
      lines[current].append(line)
  return sections, subsections, lines


def broken_references(text: str, sections: set[int], subsections: set[tuple[int, int]]
                      ) -> list[str]:
  """Every citation in ``text`` that names no heading of METHOD.md, as ``line: citation``."""
  problems = []
  i = text.find(SIGN)
  while i >= 0:
    start, line = i, text.count("\n", 0, i) + 1
    m = REFERENCE.match(text, start)
    i = text.find(SIGN, m.end() if m else start + 1)  # a range's second sign is part of m
    if not m:
      problems.append(f"{line}: {text[start:start + 12]!r} has no section number")
      continue
    a, a_sub, b, b_sub = m.groups()
    ends = [(int(a), a_sub)] + ([(int(b), b_sub)] if b else [])
    wanted = {int(a)} | (set(range(int(a), int(b) + 1)) if b else set())
    missing = sorted(n for n in wanted if n not in sections)
    missing_sub = [f"{n}.{k}" for n, k in ends if k and (n, int(k)) not in subsections]
    if b and int(b) < int(a):
      problems.append(f"{line}: {m.group(0)!r} is a backwards range")
    if missing or missing_sub:
      names = [str(n) for n in missing] + missing_sub
      problems.append(f"{line}: {m.group(0)!r} cites section(s) {', '.join(names)}, which "
                      "docs/METHOD.md does not have")
  return problems


def outside_paths(path: Path, text: str, repo_has_spec_folder: bool) -> list[str]:
  """Mentions in ``text`` of folders outside the repository, as ``line: excerpt``."""
  depth = len(path.relative_to(REPO).parent.parts)
  problems = []
  for i, line in enumerate(text.splitlines(), 1):
    if WORK_AREA.search(line):
      problems.append(f"{i}: a path into the machine's work area: {line.strip()[:100]}")
    if not repo_has_spec_folder and SPEC_FOLDER.search(line):
      problems.append(f"{i}: a folder the repository does not hold: {line.strip()[:100]}")
    for m in CLIMB.finditer(line):
      if m.group(1).count("../") > depth:
        problems.append(f"{i}: climbs above the repository root: {line.strip()[:100]}")
    for m in METHOD_LINK.finditer(line):
      target = m.group(1)
      if "://" not in target and (path.parent / target).resolve() != METHOD.resolve():
        problems.append(f"{i}: link {target!r} does not reach docs/METHOD.md")
  return problems


@pytest.fixture(scope="module")
def headings():
  assert METHOD.is_file(), "docs/METHOD.md is missing"
  return method_headings(METHOD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def files():
  found = text_files()
  assert METHOD in found and Path(__file__).resolve() in found, "the file search missed files"
  return found


def test_every_method_reference_resolves(headings, files):
  sections, subsections, _ = headings
  problems, cited = [], 0
  for path in files:
    text = read_text(path)
    cited += text.count(SIGN)
    problems += [f"{path.relative_to(REPO)}:{p}"
                 for p in broken_references(text, sections, subsections)]
  assert cited > 0, "no section references found at all: the file search is broken"
  assert not problems, "references that resolve to no METHOD.md heading:\n" + "\n".join(problems)


def test_the_reference_check_catches_broken_ones(headings):
  """The checker itself: a real section passes, a missing one, a missing subsection, a range
  running past the end and a bare sign are each reported."""
  sections, subsections, _ = headings
  last = max(sections)
  n, k = max(subsections)
  ok = (f"METHOD.md {SIGN}{last}, {SIGN}{n}.{k}, {SIGN}0{chr(0x2013)}{SIGN}{last}, "
        f"METHOD {SIGN}{SIGN}1-2")
  assert broken_references(ok, sections, subsections) == []
  bad = [f"see METHOD.md {SIGN}{last + 1}", f"METHOD.md {SIGN}{n}.{k + 1}",
         f"{SIGN}1-{SIGN}{last + 1}", f"{SIGN}{SIGN}{last}-{last + 3}", f"a bare {SIGN} sign"]
  for text in bad:
    assert len(broken_references(text, sections, subsections)) == 1, text


def test_no_file_refers_outside_the_repository(files):
  repo_has_spec_folder = (REPO / "sh\u0061red").is_dir()
  problems = []
  for path in files:
    problems += [f"{path.relative_to(REPO)}:{p}"
                 for p in outside_paths(path, read_text(path), repo_has_spec_folder)]
  assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_the_outside_check_catches_them(files):
  readme = REPO / "README.md"
  up = "..\u002f"  # spelled so that this file's own text does not climb
  for text in ("/w\u006frk/main/notes.md", f"see {up}sh\u0061red/METHOD.md",
               "[spec]" f"({up}{up}METHOD.md)", "[m]" "(docs/METHODS/METHOD.md)"):
    assert outside_paths(readme, text, False), text
  assert outside_paths(readme, "[m]" "(docs/METHOD.md) and /tmp/run", False) == []


def test_method_covers_every_topic(headings):
  sections, _, lines = headings
  assert sections == set(range(len(sections))), f"sections are not numbered 0..N: {sections}"
  missing = [f"{n}: {topic}" for n, pattern, topic in TOPICS
             if not any(re.search(pattern, h, re.IGNORECASE) for h in lines.get(n, []))]
  assert not missing, "docs/METHOD.md lacks a heading for:\n" + "\n".join(missing)
