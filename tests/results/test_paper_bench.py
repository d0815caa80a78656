"""`mtrec paper` BenchTable blocks: tables of benchmarks/results/<file>.json.

A temporary repository holds paper/ (paper.md and paper_spec.py, no
results/) and benchmarks/results/speed.json, a small benchmark output the
tests write; no experiment results and no store are involved.
"""
from __future__ import annotations

import contextlib
import io
import json
import pathlib

import pytest

from mtrec_jax import cli
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import paper

SPEC = '''
from mtrec_jax.results.paper import BenchTable

BLOCKS = [
    BenchTable("speed", "speed",
               columns=("model", ("mode", "gradient mode"),
                        ("step_ms", "step ms"),
                        ("examples_per_s", "examples/s", ",.0f"),
                        ("fraction", "of peak", ".1%")),
               where={"k": 4}, sort=("model",),
               caption="Step time at K = 4."),
    BenchTable("speed-pivot", "speed", columns=("model",),
               where={"k": [2, 4]}, pivot=("mode", "step_ms", ".1f")),
]
'''

PAPER = """# Paper

## Performance

Measured on a test machine.

<!-- mtrec:table speed -->
<!-- mtrec:end -->

Prose between.

<!-- mtrec:table speed-pivot -->
<!-- mtrec:end -->
"""

ROWS = [
    {"model": "mmoe", "k": 4, "mode": "loss", "step_ms": 2.0714,
     "examples_per_s": 123528.4, "fraction": 0.0571},
    {"model": "a|b", "k": 4, "mode": "rep", "step_ms": 1.5,
     "examples_per_s": 170666.7, "fraction": 0.1012},
    {"model": "mmoe", "k": 4, "mode": "rep", "step_ms": 2.25,
     "examples_per_s": 113777.8},
    {"model": "mmoe", "k": 8, "mode": "loss", "step_ms": 9.0,
     "examples_per_s": 1000.0, "fraction": 0.2},
]

DATA = {"device": "cpu:cpu x1", "batch_size": 256,
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "packages": {"jax": "0.0.1", "numpy": "2.0"}, "rows": ROWS}

SOURCE = ("*Source: `benchmarks/results/speed.json`; code at commit "
          "0123456; jax 0.0.1; batch 256; on cpu:cpu x1.*\n")

SPEED = """*Step time at K = 4.*

| model | gradient mode | step ms | examples/s | of peak |
|:------|:--------------|--------:|-----------:|--------:|
| a\\|b  | rep           |    1.50 |    170,667 |   10.1% |
| mmoe  | loss          |    2.07 |    123,528 |    5.7% |
| mmoe  | rep           |    2.25 |    113,778 |       – |

""" + SOURCE

PIVOT = """| model | loss | rep |
|:------|-----:|----:|
| mmoe  |  2.1 | 2.2 |
| a\\|b  |    – | 1.5 |

""" + SOURCE


def _main(*argv) -> tuple[int, str]:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    code = cli.main(list(map(str, argv)))
  return code, buf.getvalue()


def _repo(root: pathlib.Path, data=DATA, spec=SPEC, text=PAPER,
          name="speed") -> pathlib.Path:
  """root/paper and root/benchmarks/results/<name>.json; the paper dir."""
  d = root / "paper"
  d.mkdir(parents=True)
  (d / "paper_spec.py").write_text(spec)
  (d / "paper.md").write_text(text)
  bench = root / "benchmarks" / "results"
  bench.mkdir(parents=True)
  (bench / f"{name}.json").write_text(json.dumps(data, indent=2))
  return d


def _regions(d: pathlib.Path) -> dict[str, str]:
  text = (d / "paper.md").read_text()
  return {r.id: paper.region_text(text, r) for r in paper.parse_regions(text)}


def test_bench_table_renders_the_json(tmp_path):
  d = _repo(tmp_path)
  code, out = _main("paper", "--paper", d)
  assert code == 0, out
  assert "2 changed: speed, speed-pivot" in out
  regions = _regions(d)
  assert regions["speed"] == SPEED
  assert regions["speed-pivot"] == PIVOT
  text = (d / "paper.md").read_text()
  assert "Measured on a test machine.\n\n<!-- mtrec:table speed -->" in text
  assert not (d / "results").exists()  # no experiment results needed


def test_bench_table_is_byte_stable(tmp_path):
  """The same figures give the same bytes, whatever the JSON's layout and
  key order, so `--check` compares numbers, not formatting."""
  d = _repo(tmp_path)
  assert _main("paper", "--paper", d)[0] == 0
  first = (d / "paper.md").read_bytes()
  reordered = {k: DATA[k] for k in reversed(list(DATA))}
  reordered["rows"] = [dict(reversed(list(r.items()))) for r in ROWS]
  (tmp_path / "benchmarks" / "results" / "speed.json").write_text(
      json.dumps(reordered))
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 0, out
  assert "all 2 generated regions match" in out
  gen, _ = paper.write(d)
  assert gen.changed == [] and (d / "paper.md").read_bytes() == first


def test_check_fails_when_the_benchmark_json_changes(tmp_path):
  d = _repo(tmp_path)
  assert _main("paper", "--check", "--paper", d)[0] == 1  # empty regions
  assert _main("paper", "--paper", d)[0] == 0
  assert _main("paper", "--check", "--paper", d)[0] == 0
  rerun = json.loads(json.dumps(DATA))
  rerun["rows"][0]["step_ms"] = 3.5
  rerun["git"] = {"commit": "fedcba9876543210", "dirty": True}
  path = tmp_path / "benchmarks" / "results" / "speed.json"
  path.write_text(json.dumps(rerun))
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 1
  assert "block 'speed' differs" in out and "block 'speed-pivot'" in out
  assert "-| mmoe  | loss          |    2.07 |" in out
  assert "+| mmoe  | loss          |    3.50 |" in out
  assert "commit fedcba9 with uncommitted changes" in out
  assert "2 of 2 generated regions" in out
  assert _main("paper", "--paper", d)[0] == 0
  assert _main("paper", "--check", "--paper", d)[0] == 0


def test_from_does_not_move_the_benchmarks(tmp_path, monkeypatch):
  """Benchmarks are read from the repository holding the paper folder,
  not from --from nor from the working directory."""
  d = _repo(tmp_path / "repo")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  assert _main("paper", "--paper", d, "--from", elsewhere)[0] == 0
  assert _regions(d)["speed"] == SPEED


def test_unknown_column_names_the_file_the_columns_and_the_fix(tmp_path):
  d = _repo(tmp_path, spec=SPEC.replace('("step_ms", "step ms")',
                                        '("step_msec", "step ms")'))
  code, out = _main("paper", "--paper", d)
  assert code == 2
  for words in ("bench table 'speed'", "benchmarks/results/speed.json",
                "column 'step_msec'", "Did you mean 'step_ms'",
                "Its columns: model, k, mode, step_ms, examples_per_s, "
                "fraction", "paper_spec.py"):
    assert words in out
  assert (d / "paper.md").read_text() == PAPER  # nothing written
  # A where, sort or pivot key is checked the same way.
  block = paper.BenchTable("b", "speed", columns=("model",),
                           pivot=("modes", "step_ms"))
  with pytest.raises(UnknownNameError, match="Did you mean 'mode'"):
    paper.render_bench(block, tmp_path)


def test_missing_file_names_the_path_and_the_fix(tmp_path):
  d = _repo(tmp_path, name="speed_cpu")
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 2
  for words in ("bench table 'speed'", "no benchmark results at",
                str(tmp_path / "benchmarks" / "results" / "speed.json"),
                "python -m benchmarks.NAME --json benchmarks/results/"
                "speed.json", "did you mean 'speed_cpu'",
                "benchmarks/results has: speed_cpu"):
    assert words in out


def test_where_that_keeps_nothing_lists_the_values(tmp_path):
  d = _repo(tmp_path, spec=SPEC.replace('where={"k": 4}', 'where={"k": 5}'))
  code, out = _main("paper", "--paper", d)
  assert code == 2
  assert "where={'k': 5} keeps no row" in out and "k has 4, 8" in out


def test_bad_json_is_a_clear_error(tmp_path):
  d = _repo(tmp_path)
  path = tmp_path / "benchmarks" / "results" / "speed.json"
  path.write_text("{not json")
  code, out = _main("paper", "--paper", d)
  assert code == 2 and "speed.json:1: not JSON" in out
  path.write_text(json.dumps({"rows": {"model": "mmoe"}}))
  code, out = _main("paper", "--paper", d)
  assert code == 2 and '"rows" is a list of objects' in out


def test_sort_none_keeps_the_file_order(tmp_path):
  _repo(tmp_path)
  block = paper.BenchTable("b", "speed", columns=("model",), sort=None,
                           where={"mode": "rep"})
  assert block.sort == ()
  assert "| a\\|b  |\n| mmoe  |\n" in paper.render_bench(block, tmp_path)


def test_pivot_refuses_two_values_for_one_cell(tmp_path):
  block = paper.BenchTable("b", "speed", columns=("k",),
                           pivot=("mode", "step_ms"))
  _repo(tmp_path)
  with pytest.raises(ValueError, match=r"two rows .* \{'k': 4\} and "
                                       r"mode='rep'"):
    paper.render_bench(block, tmp_path)


@pytest.mark.parametrize("kwargs,words", [
    ({"file": "speed.json"}, "without '.json'"),
    ({"file": "../speed"}, "must be the name of a JSON file"),
    ({"folder": "results"}, "folder 'results' is not one of"),
    ({"columns": "model"}, "columns is a tuple"),
    ({"columns": ()}, "columns is a tuple"),
    ({"columns": (("model", "m", ".2f", "x"),)}, "must be 'key'"),
    ({"columns": (("step_ms", "ms", ".2q"),)}, "format '.2q'"),
    ({"sort": "model"}, "sort is a tuple"),
    ({"sort": [1]}, "sort is a tuple"),
    ({"where": ["k"]}, "where is {key"),
    ({"pivot": "mode"}, "pivot must be"),
    ({"pivot": ("mode", "step_ms", "%%")}, "format '%%'"),
    ({"digits": -1}, "digits"),
])
def test_spec_errors(kwargs, words):
  args = {"id": "b", "file": "speed", "columns": ("model",), **kwargs}
  with pytest.raises(ValueError) as e:
    paper.BenchTable(**args)
  assert words in str(e.value)


def test_bench_table_reads_a_reference_result(tmp_path):
  """folder='references/results': the rows a reference implementation's
  script wrote there (and the source line names that file)."""
  spec = SPEC.replace('BenchTable("speed-pivot", "speed",',
                      'BenchTable("speed-pivot", "ref_speed", '
                      'folder="references/results",')
  d = _repo(tmp_path, spec=spec)
  ref = tmp_path / "references" / "results"
  ref.mkdir(parents=True)
  rows = [dict(r, step_ms=r["step_ms"] * 10) for r in ROWS]
  (ref / "ref_speed.json").write_text(json.dumps({"rows": rows}))
  code, out = _main("paper", "--paper", d)
  assert code == 0, out
  body = _regions(d)["speed-pivot"]
  assert "`references/results/ref_speed.json`" in body
  assert "| mmoe  | 20.7 | 22.5 |" in body  # ten times speed.json's
  (ref / "ref_speed.json").unlink()
  code, out = _main("paper", "--paper", d)
  assert code != 0 and "references/results/ref_speed.json" in out


def test_bench_tables_are_not_experiments(tmp_path):
  """A BenchTable needs no experiment results: experiments_of (what
  --export and the results loader read) leaves it out."""
  blocks = [paper.BenchTable("b", "speed", columns=("model",)),
            paper.Table("t", "quickstart")]
  assert paper.experiments_of(blocks) == ["quickstart"]
  d = _repo(tmp_path)
  gen = paper.generate(d)
  assert gen.results == {} and sorted(gen.bodies) == ["speed", "speed-pivot"]
  # Marked like any table: a figure marker is refused with the fix.
  d = _repo(tmp_path / "2", text=PAPER.replace("mtrec:table speed-pivot",
                                               "mtrec:figure speed-pivot"))
  code, out = _main("paper", "--paper", d)
  assert code == 2 and "write <!-- mtrec:table speed-pivot -->" in out


def test_committed_paper_has_the_performance_tables():
  """Section 7 of the repository's paper is generated from the committed
  benchmark outputs (and every row table's file is committed)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  blocks = [b for b in paper.load_spec(root / "paper")
            if isinstance(b, paper.BenchTable)]
  assert blocks
  for b in blocks:
    assert paper.bench_path(root, b).exists()
  blocks = [b for b in blocks if b.folder == paper.BENCH_DIR]
  text = (root / "paper" / "paper.md").read_text()
  section = text[text.index("## 7. Performance"):]
  assert {r.id for r in paper.parse_regions(section)} == {b.id for b in blocks}
