"""Issue 16 defect 5: processes preparing one dataset for the first time at
once (array-job shards) all get it; before, the losers of TFDS's final
rename crashed with FileExistsError."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Each worker imports, then waits for all the others (a file barrier), then
# loads one dataset through its prepared copy.  The parse is slowed down so
# that every worker is past its "is it prepared?" check before the first one
# finishes: the race is certain, not left to timing.
WORKER = textwrap.dedent("""
    import pathlib, sys, time
    import mtrec_jax.data  # noqa: F401
    from mtrec_jax.data import array_record, stored_synthetic
    tfds_dir, barrier, me, n = sys.argv[1], pathlib.Path(sys.argv[2]), \\
        sys.argv[3], int(sys.argv[4])
    original = array_record.ColumnarBuilder._split_generators
    def slow(self, dl_manager):
      time.sleep(1.5)
      return original(self, dl_manager)
    array_record.ColumnarBuilder._split_generators = slow
    (barrier / me).touch()
    deadline = time.time() + 300
    while len(list(barrier.iterdir())) < n and time.time() < deadline:
      time.sleep(0.01)
    ds = stored_synthetic.load_synthetic(
        "gradnorm_toy", storage="array_record", tfds_dir=tfds_dir, seed=1,
        num_tasks=2, n_train=50, n_val=10, n_test=10)
    print("rows", len(ds.splits["train"]["x"]), flush=True)
    """)


def test_concurrent_first_prepare(tmp_path):
  from mtrec_jax.data import stored_synthetic
  n = 2
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  procs = [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(tmp_path / "tfds"), str(barrier),
       str(i), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=env) for i in range(n)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "rows 50" in out, err[-3000:]
  said = "".join(err for _, err in outs)
  assert said.count("preparing mtrec_synthetic/") == 1  # prepared once
  # The copy they share is whole: what a fresh process generates in memory.
  stored = stored_synthetic.load_synthetic(
      "gradnorm_toy", storage="array_record", tfds_dir=tmp_path / "tfds",
      seed=1, num_tasks=2, n_train=50, n_val=10, n_test=10)
  memory = stored_synthetic.load_synthetic(
      "gradnorm_toy", storage="memory", seed=1, num_tasks=2, n_train=50,
      n_val=10, n_test=10)
  for split, columns in memory.splits.items():
    for key, value in columns.items():
      assert (stored.splits[split][key] == value).all(), (split, key)
