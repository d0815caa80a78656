"""`mtrec table` on a tiny stored run: Markdown and LaTeX, --from, errors.

One module fixture trains quickstart's grid (shared-bottom and MMoE, seed 0)
for 30 steps in a subprocess into a temporary store; the tests read it.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

from mtrec_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
SETS = ["--set", "train.num_steps=30", "--set", "train.eval_every=10",
        "--set", "data.n_train=512", "--set", "data.n_val=128",
        "--set", "data.n_test=128", "--set", "train.batch_size=64"]


def _main(*argv) -> tuple[int, str]:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    code = cli.main(list(map(str, argv)))
  return code, buf.getvalue()


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
  """quickstart x seed 0 at 30 steps, trained once into a new store. XLA's
  optimisation level 0 halves the compile time that dominates here."""
  tmp = tmp_path_factory.mktemp("table")
  store = tmp / "mtrec.db"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  proc = subprocess.run(
      [sys.executable, "-m", "mtrec_jax.cli", "run", "quickstart", *SETS,
       "--workdir", tmp / "runs", "--store", store, "--no-progress"],
      cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return {"tmp": tmp, "store": store}


def test_markdown(stored):
  code, out = _main("table", "quickstart", *SETS, "--store", stored["store"])
  assert code == 0, out
  lines = out.splitlines()
  assert lines[0].split("|")[1:-1] == [
      " model         ", " task1 mse ↓ ", " task2 mse ↓ ", " mean rank ↓ ",
      " runs "]
  assert lines[2].startswith("| shared_bottom |")
  assert lines[3].startswith("| mmoe          |")
  assert all(l.endswith("|  1/1 |") for l in lines[2:4])
  assert "Δm%" not in out  # no single_task or mean row: no baseline
  assert "over seeds {0}" in out
  # Deterministic: the same store prints the same bytes.
  assert _main("table", "quickstart", *SETS, "--store", stored["store"]) == (
      code, out)


def test_latex_with_baseline_and_metrics(stored):
  code, out = _main("table", "quickstart", *SETS, "--store", stored["store"],
                    "--format", "latex", "--baseline", "model=shared_bottom",
                    "--metric", "mse", "task1/mae")
  assert code == 0, out
  assert r"\begin{tabular}{lrrrrrr}" in out and r"\bottomrule" in out
  header = next(l for l in out.splitlines() if l.startswith("model &"))
  assert header == (r"model & task1 mse $\downarrow$ & task2 mse $\downarrow$ "
                    r"& task1 mae $\downarrow$ & $\Delta_m$\% $\uparrow$ & "
                    r"mean rank $\downarrow$ & runs \\")
  assert r"shared\_bottom & " in out
  assert "% Δm%: mean over the 3 metric columns" in out


def test_missing_seeds_show(stored):
  code, out = _main("table", "quickstart", *SETS, "--seeds", "0-1",
                    "--store", stored["store"], "--where", "model=mmoe")
  assert code == 0, out
  assert "| mmoe  |" in out and "1/2 |" in out and "shared_bottom" not in out
  assert "Not done: model=mmoe: seed 1 missing." in out


def test_from_an_exported_jsonl(stored):
  out_dir = stored["tmp"] / "frozen"
  code, msg = _main("export", "quickstart", "--format", "jsonl", "--out",
                    out_dir / "quickstart.jsonl", "--store", stored["store"])
  assert code == 0, msg
  from_store = _main("table", "quickstart", *SETS, "--store", stored["store"])
  from_file = _main("table", "quickstart", "--from", out_dir)
  assert from_file == from_store
  code, msg = _main("table", "quickstart", "--from", out_dir, *SETS)
  assert code == 2 and "drop --set" in msg
  code, msg = _main("table", "quickstart-x", "--from", out_dir)
  assert code == 2 and "no results of experiment 'quickstart-x'" in msg
  assert "did you mean 'quickstart'" in msg


@pytest.mark.parametrize("argv,words", [
    (["--metric", "msee"], ["no run has the metric 'msee'"]),
    (["--baseline", "modl=mmoe"], ["unknown axis 'modl'",
                                   "Did you mean 'model'"]),
    (["--baseline", "mmoe"], ["write auto, none or axis=value"]),
    (["--where", "model=mmo"], ["no run has model 'mmo'",
                                "Did you mean 'mmoe'"]),
    (["--rows", "seed"], ["'seed' cannot be a row axis"]),
])
def test_bad_arguments(stored, argv, words):
  code, out = _main("table", "quickstart", *SETS, "--store", stored["store"],
                    *argv)
  assert code == 2
  for w in words:
    assert w in out


def test_store_problems(stored, tmp_path):
  code, out = _main("table", "quickstart", "--store", tmp_path / "no.db")
  assert code == 2 and "no results store" in out
  assert not (tmp_path / "no.db").exists()
  # Without the --set overrides the runs were made with, the grid differs.
  code, out = _main("table", "quickstart", "--store", stored["store"])
  assert code == 2
  assert "none of the 2 runs of 'quickstart'" in out
  assert "pass the --set overrides" in out
  code, out = _main("table", "quickstrt", "--store", stored["store"])
  assert code == 2 and "Did you mean 'quickstart'" in out
