"""Issue 16 defect 4: a run's data is part of its identity and provenance.

Edits that keep a file's name, size and modification time (``cp -p``,
``rsync -a``) change the content hash, rebuild the prepared copy, and make
a stored run on the old data not count for the new; a divergence on bad
data does not block the run on clean data; results stored before data
identity existed still count (see `Store.claim`).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import mtrec_jax.data  # noqa: F401  (registers the datasets)
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.config import base_config
from mtrec_jax.data import identity
from mtrec_jax.registry import DATASETS
from mtrec_jax.results.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_movielens import write_100k  # noqa: E402  (tiny 100K-format files)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path / "cache"))


def _same_size_edit(path: Path) -> None:
  """Changes one byte of a text file and puts its mtime back, as `cp -p` of
  an edited copy would: name, size and mtime all stay."""
  st = path.stat()
  data = bytearray(path.read_bytes())
  i = next(i for i in range(len(data) - 1, -1, -1)
           if chr(data[i]) in "12345" and data[i - 1:i] == b"\t")
  data[i] = ord("1") if data[i] != ord("1") else ord("2")
  edited = path.with_name(path.name + ".edited")
  edited.write_bytes(bytes(data))
  os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
  shutil.copy2(edited, path)  # cp -p: content, then the times
  edited.unlink()
  after = path.stat()
  assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_hash_is_cached_and_sees_same_size_edits(tmp_path, monkeypatch):
  source = write_100k(tmp_path / "ml-100k")
  reads = []
  real = identity.file_sha256
  monkeypatch.setattr(identity, "file_sha256",
                      lambda p: reads.append(Path(p).name) or real(p))
  first = identity.source_hash(source)
  assert sorted(reads) == sorted(p.name for p in source.iterdir())
  assert first["files"]["u.data"] == real(source / "u.data")
  reads.clear()
  assert identity.source_hash(source) == first and reads == []  # cached
  _same_size_edit(source / "u.data")
  edited = identity.source_hash(source)
  assert reads == ["u.data"] and edited["hash"] != first["hash"]
  # A new mtime alone rehashes the file, and gives the same hash.
  reads.clear()
  os.utime(source / "u.item", ns=(1, 10**18))
  assert identity.source_hash(source) == edited and reads == ["u.item"]
  # The same bytes elsewhere (a moved data folder) have the same hash.
  shutil.copytree(source, tmp_path / "moved")
  assert identity.source_hash(tmp_path / "moved")["hash"] == edited["hash"]


def test_prepared_copy_is_rebuilt_after_a_cp_p_edit(tmp_path):
  source = write_100k(tmp_path / "ml-100k")
  kwargs = dict(data_dir=str(source), max_len=3, strict_counts=False,
                tfds_dir=str(tmp_path / "tfds"))
  before = DATASETS.get("movielens")(seed=0, **kwargs)
  _same_size_edit(source / "u.data")
  after = DATASETS.get("movielens")(seed=0, **kwargs)
  # Before the fix, the (name, size, mtime) key reused the stale copy.
  assert len(list((tmp_path / "tfds" / "mtrec_movielens").iterdir())) == 2
  assert not np.array_equal(before.splits["train"]["rating"],
                            after.splits["train"]["rating"]) or \
      not np.array_equal(before.splits["test"]["rating"],
                         after.splits["test"]["rating"])


def test_identity_of_a_config():
  c = base_config()  # synthetic: the config determines the data
  assert identity.identity(c) is None


class _Trainer:
  """Trains nothing: a result whose status `outcome()` picks."""

  def __init__(self):
    self.outcome = "done"
    self.trained = 0

  def prepare(self, run):
    return None

  def batches(self, runs):
    return [[i] for i in range(len(runs))]

  def train(self, claimed, **kw):
    self.trained += len(claimed)
    out = []
    for c in claimed:
      config_hash, seed = sweep.run_key(c.run)
      out.append({"status": self.outcome, "config_hash": config_hash,
                  "seed": seed, "metrics": {}, "error": None})
    return out


class _OneHost:
  primary = True

  def agree(self, run_id):
    return run_id


def test_changed_data_is_another_run_and_bad_data_does_not_block(tmp_path):
  source = write_100k(tmp_path / "ml-100k")
  c = base_config()
  c.data = {"name": "movielens", "data_dir": str(source),
            "strict_counts": False, "storage": "memory"}
  exp = experiment_lib.Experiment(c, name="toy")
  trainer = _Trainer()

  def sweep_once():
    before = trainer.trained
    sweep.run_sweep(exp, store=tmp_path / "m.db", workdir=tmp_path / "runs",
                    trainer=trainer, hosts=_OneHost(), provenance={})
    return trainer.trained - before

  def stored():
    with Store(tmp_path / "m.db") as s:
      return [(r["status"], r["superseded"], (r.get("data") or {}).get("hash"))
              for r in s.results("toy", latest_only=False)]

  clean = identity.source_hash(source)["hash"]
  assert sweep_once() == 1
  assert stored() == [("done", False, clean)]
  assert sweep_once() == 0  # same data: skipped
  # A cp -p edit: the same config hash, other data -> trained again.
  original = (source / "u.data").read_bytes()
  _same_size_edit(source / "u.data")
  bad = identity.source_hash(source)["hash"]
  trainer.outcome = "diverged"
  assert sweep_once() == 1
  assert stored() == [("done", True, clean), ("diverged", False, bad)]
  assert sweep_once() == 0  # the divergence on that data is its outcome
  # The clean data back: the divergence on bad data does not block it.
  st = (source / "u.data").stat()
  (source / "u.data").write_bytes(original)
  os.utime(source / "u.data", ns=(st.st_atime_ns, st.st_mtime_ns))
  trainer.outcome = "done"
  assert sweep_once() == 1
  assert stored()[-1] == ("done", False, clean)
  assert sweep_once() == 0


def test_claim_compares_the_data_hash(tmp_path):
  with Store(tmp_path / "m.db") as s:
    def claim(seed, data_hash, force=False):
      return s.claim("e", "r", {"seed": seed}, {}, "h", seed, {},
                     data_hash=data_hash, force=force)

    def finish(run_id, seed, data):
      s.finish(run_id, {"status": "done", "config_hash": "h", "seed": seed,
                        "metrics": {}, **({"data": data} if data else {})})

    # Stored before data identity (no 'data'): counts as the current data.
    finish(claim(0, None), 0, None)
    assert claim(0, "aaaa") is None and claim(0, None) is None
    # Stored with data 'aaaa': other data is another run; unknown is not.
    finish(claim(1, "aaaa"), 1, {"hash": "aaaa"})
    assert claim(1, "aaaa") is None and claim(1, None) is None
    run_id = claim(1, "bbbb")
    assert run_id is not None
    finish(run_id, 1, {"hash": "bbbb"})
    assert claim(1, "bbbb") is None
    assert claim(1, "aaaa") is not None  # the latest result is on 'bbbb'
    # The export carries the data hash.
    cols, rows = s.table("e")
    assert "data_hash" in cols
    assert {r["seed"]: r["data_hash"] for r in rows}[0] is None
