"""The documentation site (docs/) builds without warnings and its examples run.

Sphinx builds the site twice in subprocesses, as CI and a developer would:
``-b html`` with ``-W --keep-going`` (a docstring that autodoc cannot parse
as reST, a broken cross-page link or toctree entry fails), then ``-b
doctest``, which executes every ``testcode``/``doctest`` block of the pages
and compares the printed output.  Both are skipped, saying why, only when
the ``docs`` extra is not installed.  The shell examples are not executed
(they train for minutes); instead every ``mtrec ...`` line in the pages'
``bash`` blocks must name a real subcommand, real options of it and a
registered experiment, so a renamed flag or experiment fails here.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HAVE_SPHINX = all(importlib.util.find_spec(m) is not None
                  for m in ("sphinx", "myst_parser", "furo"))
needs_sphinx = pytest.mark.skipif(
    not HAVE_SPHINX, reason="the docs extra is not installed: "
    "pip install -e '.[docs]' (sphinx, myst-parser, furo)")


@pytest.fixture(scope="module")
def doctrees(tmp_path_factory):
  return tmp_path_factory.mktemp("doctrees")


def _sphinx(builder: str, out: pathlib.Path, doctrees: pathlib.Path):
  cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
         "-b", builder, "-d", str(doctrees), str(DOCS), str(out)]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=900)


@needs_sphinx
def test_site_builds_without_warnings(tmp_path, doctrees):
  done = _sphinx("html", tmp_path / "html", doctrees)
  assert done.returncode == 0, (
      "the docs site has warnings (fix the reST of the docstring or page "
      f"named; build locally with: sphinx-build -W --keep-going -b html docs "
      f"docs/_build/html):\n{done.stderr}{done.stdout}")
  for page in ("index", "getting-started", "concepts", "design",
               "howto/strategy", "api/weighting", "api/results"):
    assert (tmp_path / "html" / f"{page}.html").is_file(), page
  api = (tmp_path / "html" / "api" / "weighting.html").read_text()
  assert "mtrec_jax.weighting.aggregate" in api  # autodoc ran


@needs_sphinx
def test_examples_run(tmp_path, doctrees):
  done = _sphinx("doctest", tmp_path / "doctest", doctrees)
  report = tmp_path / "doctest" / "output.txt"
  text = report.read_text() if report.is_file() else ""
  assert done.returncode == 0, f"{done.stderr}{done.stdout}\n{text}"
  tested = re.search(r"^\s*(\d+) tests?$", text, re.M)
  assert tested and int(tested.group(1)) >= 15, text
  assert "0 failures in tests" in text, text


# --------------------------------------------------------------------------
# Shell examples: checked against the command line, not run.


def _shell_commands() -> list[tuple[str, list[str]]]:
  """(page, argv) of every `mtrec ...` line in the pages' bash blocks."""
  out = []
  for page in sorted(DOCS.rglob("*.md")):
    if "_build" in page.parts:
      continue
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    for block in blocks:
      for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, "&&"]:  # comments dropped; split at && ; |
          if token not in ("&&", ";", "|", "||"):
            argv.append(token)
            continue
          if argv and argv[0] == "mtrec":
            out.append((str(page.relative_to(DOCS)), argv[1:]))
          argv = []
  return out


def test_shell_examples_name_real_commands_options_and_experiments():
  from mtrec_jax import cli
  from mtrec_jax.registry import EXPERIMENTS

  def subparsers(parser):
    for action in parser._actions:
      if action.__class__.__name__ == "_SubParsersAction":
        return action.choices
    return {}

  commands = _shell_commands()
  assert len(commands) >= 10, commands
  top = subparsers(cli.build_parser())
  experiments = set(EXPERIMENTS.names())
  problems = []
  for page, argv in commands:
    parser = top.get(argv[0])
    if parser is None:
      problems.append(f"{page}: no subcommand {argv[0]!r}: {argv}")
      continue
    rest = argv[1:]
    nested = subparsers(parser)
    if nested:
      parser = nested.get(rest[0]) if rest else None
      if parser is None:
        problems.append(f"{page}: no subcommand {argv[:2]}")
        continue
      rest = rest[1:]
    flags = set(parser._option_string_actions)
    for token in rest:
      if token.startswith("--") and token.split("=")[0] not in flags:
        problems.append(f"{page}: `mtrec {argv[0]}` has no option {token}")
    names = [action.dest for action in parser._positionals._group_actions]
    if names == ["name"] and rest and not rest[0].startswith("-"):
      if ":" not in rest[0] and rest[0] not in experiments:  # not file.py:NAME
        problems.append(f"{page}: no experiment {rest[0]!r}")
  assert not problems, "\n".join(problems)
