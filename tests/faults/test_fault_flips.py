"""A byte flipped in each file of a real run's newest checkpoint, one file at
a time, and in each file of its params/ folder: detected on restore (issue
16, "must show").

The checkpoints are those `mtrec run` wrote for the reference run (Orbax's
files, its commit files and the checksum manifest).  A damaged newest
checkpoint gives way, with a warning, to the one before it, restored equal
to an undamaged read of that one; with both damaged the run starts fresh.
That a run resumed from such a fallback ends with the uninterrupted result
is shown end to end in test_fault_kills.py (a flipped checkpoint after the
2nd and 4th kill of each chain).  params/ has nothing to fall back to:
`init_from` and `mtrec recommend` (both read it through `load_params`)
refuse it naming the folder.  (tests/train/test_integrity.py flips every
file of a synthetic checkpoint against `verify_manifest`; here the
restore itself, on a real run's files.)
"""
from __future__ import annotations

import json
import random
import shutil
import warnings

import jax
import numpy as np
import pytest

import faults_harness as h
from mtrec_jax.serve import load
from mtrec_jax.train import checkpoints
from mtrec_jax.train import loop

pytestmark = pytest.mark.slow


def _flip(path, rng: random.Random) -> None:
  data = bytearray(path.read_bytes())
  data[rng.randrange(len(data))] ^= 0xFF
  path.write_bytes(bytes(data))


def _files(folder) -> list[str]:
  return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                if p.is_file())


def _equal(a, b) -> bool:
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y))
                          for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def restorer(reference):
  """restore(run_dir) -> (Restored or None, warnings) with the reference
  run's identity and tree shapes."""
  cfg = load.config_from_json(
      json.loads((reference / "config.json").read_text()), reference)
  like = loop.init_state(loop.Components(cfg))
  identity = {"config_hash": h.result(reference)["config_hash"], "seed": 0}

  def restore(run_dir):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      with checkpoints.RunCheckpoints(run_dir, keep=2, mode="min",
                                      identity=identity) as m:
        got = m.restore_latest(like, like.params)
    return got, [str(w.message) for w in caught
                 if issubclass(w.category, checkpoints.CheckpointWarning)]
  return restore


def test_a_flip_in_each_file_of_the_newest_checkpoint_falls_back(
    reference, restorer, tmp_path):
  src = checkpoints.checkpoints_dir(reference)
  steps = checkpoints.saved_steps(reference)
  assert steps == [h.NUM_STEPS - h.EVAL_EVERY, h.NUM_STEPS]
  previous, newest = steps
  # The undamaged read of the checkpoint before, to compare against.
  only_previous = tmp_path / "previous"
  shutil.copytree(src, checkpoints.checkpoints_dir(only_previous))
  shutil.rmtree(checkpoints.checkpoints_dir(only_previous) / str(newest))
  want, caught = restorer(only_previous)
  assert want.step == previous and not caught
  files = _files(src / str(newest))
  # Orbax's data and metadata of all three items, its commit files, ours.
  assert {checkpoints.MANIFEST, "_CHECKPOINT_METADATA"} <= set(files)
  assert {f.split("/")[0] for f in files} >= {"state", "best", "meta"}
  assert len(files) > 20
  rng = random.Random(1616)
  run = tmp_path / "run"
  for name in files:
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, checkpoints.checkpoints_dir(run))
    _flip(checkpoints.checkpoints_dir(run) / str(newest) / name, rng)
    got, caught = restorer(run)
    assert len(caught) == 1 and (
        f"checkpoints/{newest} is damaged" in caught[0]), (name, caught)
    assert f"using the one before (step {previous})" in caught[0]
    assert got is not None and got.step == previous, name
    assert got.meta == want.meta, name
    assert _equal(got.state, want.state), name
    assert _equal(got.best_params, want.best_params), name
    # The damaged one is gone, so the next save cannot be mistaken for it.
    assert checkpoints.saved_steps(run) == [previous], name


def test_flips_in_both_checkpoints_start_the_run_fresh(
    reference, restorer, tmp_path):
  src = checkpoints.checkpoints_dir(reference)
  shutil.copytree(src, checkpoints.checkpoints_dir(tmp_path))
  rng = random.Random(7)
  for step in checkpoints.saved_steps(tmp_path):
    folder = checkpoints.checkpoints_dir(tmp_path) / str(step)
    _flip(folder / rng.choice(_files(folder)), rng)
  got, caught = restorer(tmp_path)
  assert got is None
  assert len(caught) == 2 and "starting from step 0" in caught[1], caught


def test_a_flip_in_each_params_file_is_refused_naming_the_folder(
    reference, tmp_path):
  src = checkpoints.params_dir(reference)
  files = _files(src)
  assert checkpoints.MANIFEST in files and len(files) > 5
  assert _equal(checkpoints.load_params(reference),
                checkpoints.load_params(src))
  rng = random.Random(3)
  for name in files:
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run / checkpoints.PARAMS_DIR)
    _flip(run / checkpoints.PARAMS_DIR / name, rng)
    with pytest.raises(checkpoints.ChecksumError,
                       match="parameters in .*params.* are damaged"):
      checkpoints.load_params(run)
