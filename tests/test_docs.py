"""Design notes that the code cites live in the repository."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("mtrec_jax", "experiments", "tests", "benchmarks")
CITED = re.compile(r"\bdocs/[\w./-]+\.md\b")


def _sources():
  for folder in SOURCES:
    yield from sorted((ROOT / folder).rglob("*.py"))


def test_cited_docs_exist():
  cited = {(f.relative_to(ROOT), m) for f in _sources()
           for m in CITED.findall(f.read_text())}
  assert any(m == "docs/design.md" for _, m in cited)
  missing = [f"{f}: {m}" for f, m in sorted(cited) if not (ROOT / m).is_file()]
  assert not missing, "\n".join(missing)


def test_no_citation_of_a_design_file_outside_the_repo():
  """DESIGN.md was cited but never committed; docs/design.md replaced it."""
  stale = [str(f.relative_to(ROOT)) for f in _sources()
           if f.name != "test_docs.py" and "DESIGN.md" in f.read_text()]
  assert not stale, stale


def _experiment_docstrings():
  import ast
  for f in sorted((ROOT / "experiments").glob("*.py")):
    yield f.name, ast.get_docstring(ast.parse(f.read_text())) or ""


def test_experiment_docstrings_point_at_the_paper_instead_of_copying():
  """Measured numbers live only in generated files: an experiment's
  docstring names the paper section and its generated blocks, which must
  exist in paper/paper.md, and holds no mean ± std result."""
  paper = (ROOT / "paper" / "paper.md").read_text()
  sections = set(re.findall(r"^#{2,3} (\d+\.\d+b?)\b", paper, re.M))
  blocks = set(re.findall(r"<!-- mtrec:(?:table|figure) ([\w-]+) -->", paper))
  pointers = 0
  for name, doc in _experiment_docstrings():
    assert not re.search(r"\d\.\d+ ?± ?\d", doc), name
    assert "Measured" not in doc, name
    for section in re.findall(r"section (\d+\.\d+b?)\b", doc):
      assert section in sections, (name, section)
    for token in re.findall(r"``([^`]+)``", doc):
      if token.startswith("paper/"):  # a committed export
        assert (ROOT / token).is_file(), (name, token)
      elif re.fullmatch(r"[\w-]+", token):  # a generated block's id
        assert token in blocks, (name, token)
        pointers += 1
  assert pointers >= 10
