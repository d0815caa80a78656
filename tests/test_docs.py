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


# A measured quantity: a time (ms, µs, ns; "N s a step"), a rate (examples/s,
# steps/s), FLOPs, or a speed ratio ("3x faster").  Defaults and paper
# constants ("default 300 s", "1e-3", "β2 = 0.98") do not match.
TIMING = re.compile(
    r"\d(?:[\d.,]*\d)?\s?(?:ms|µs|us|ns|[GMT]FLOPs?)\b"
    r"|\d(?:[\d.,]*\d)?\s?s (?:a|per|to) (?:step|row|example|load|hash|call)"
    r"|\d(?:[\d.]*\d)?k? ?(?:examples|steps|rows|items|tokens|it)/s\b"
    r"|\d(?:\.\d+)?\s?(?:x|×)\s+(?:faster|slower|speed|as fast)"
    r"|\d(?:\.\d+)?\s?times (?:faster|slower)", re.I)
# What makes such a number legitimate: the generated file it comes from.
POINTER = re.compile(r"\b(?:benchmarks|references)/results/[\w./-]+\b")


def _doc_texts(path: pathlib.Path):
  """(line, text) of every string literal and comment of a module: the
  docstrings and the comments that explain a design choice."""
  import io
  import tokenize
  src = path.read_text()
  for tok in tokenize.generate_tokens(io.StringIO(src).readline):
    if tok.type in (tokenize.STRING, tokenize.COMMENT):
      yield tok.start[0], tok.string


def measured_numbers_without_pointer(text: str) -> list[str]:
  """Timings in `text` whose paragraph names no generated results file."""
  bad = []
  for para in re.split(r"\n\s*\n", text):
    if POINTER.search(para):
      continue
    bad += [m.group() for m in TIMING.finditer(para)]
  return bad


def test_timing_regex_catches_hand_copied_numbers():
  assert measured_numbers_without_pointer("costs 8 ms a step for K = 4")
  assert measured_numbers_without_pointer("(~15 µs an example, 60k examples/s)")
  assert measured_numbers_without_pointer("unrolled is 2.5x faster on CPU")
  assert measured_numbers_without_pointer("36 s to load Census-Income")
  assert not measured_numbers_without_pointer(
      "8 ms a step (`benchmarks/results/strategies_cpu_k4.md`, row mgda)")
  for ok in ("lr 1e-3, β2 = 0.98", "default 300 s; beats every 60 s",
             "rows scaled 0.1/1/10, one row x100", "norms differ by 10-100x"):
    assert not measured_numbers_without_pointer(ok), ok


def test_package_docs_point_to_generated_numbers_instead_of_copying():
  """No measured time, rate or speed ratio copied by hand into the package's
  docstrings or comments: numbers live in generated files (benchmarks/
  results/, references/results/), prose names the file; every file so named
  exists."""
  bad, missing = [], []
  for f in sorted((ROOT / "mtrec_jax").rglob("*.py")):
    for line, text in _doc_texts(f):
      where = f"{f.relative_to(ROOT)}:{line}"
      bad += [f"{where}: {n!r}" for n in measured_numbers_without_pointer(text)]
      missing += [f"{where}: {p}" for p in POINTER.findall(text)
                  if not (ROOT / p).exists()]
  assert not bad, ("measured numbers without a pointer to the generated "
                   "file (replace them by 'see benchmarks/results/...'):\n"
                   + "\n".join(bad))
  assert not missing, "\n".join(missing)


# A measured value as the tables print it (4 decimals, or a signed Δm%).
TABLE_VALUE = re.compile(r"\d\.\d{3,}|Δm% ?[+−-]\d")
GENERATED_REGION = re.compile(r"<!-- mtrec:\w+[^>]*-->.*?<!-- mtrec:end -->",
                              re.S)


def test_paper_prose_points_at_tables_instead_of_copying():
  """Prose outside the generated regions of paper.md names rows and columns;
  a value copied by hand would drift when the results are regenerated."""
  prose = GENERATED_REGION.sub("", (ROOT / "paper" / "paper.md").read_text())
  copied = [line for line in prose.splitlines() if TABLE_VALUE.search(line)]
  assert not copied, copied
  assert TABLE_VALUE.search("NDCG@10 0.0760 against") and TABLE_VALUE.search(
      "by Δm% −15.3")


def test_readme_experiment_table_lists_every_built_in_experiment():
  """The README's table of experiments went stale once (it missed six and
  miscounted a grid's strategies): its rows are the experiments that
  experiments/*.py registers, no more and no fewer."""
  registered = {m for f in sorted((ROOT / "experiments").glob("*.py"))
                for m in re.findall(r'@EXPERIMENTS\.register\("([\w-]+)"\)',
                                    f.read_text())}
  lines = (ROOT / "README.md").read_text().splitlines()
  start = lines.index("| experiment | what it runs | what it checks |")
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append(re.match(r"\| `([\w-]+)` \|", line).group(1))
  assert len(registered) > 10
  assert len(rows) == len(set(rows)), rows
  assert set(rows) == registered, (sorted(registered - set(rows)),
                                   sorted(set(rows) - registered))
