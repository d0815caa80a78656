"""Two different configs of one grid point in one workdir and store, one
after the other and both at once: both results intact, each in its own run
folder, neither reading or deleting the other's files (issue 16 defect 1
and "must show").

Config A is the reference run's; config B is the same experiment and grid
point with one non-axis key changed (`--set optimizer.learning_rate`), so
both have the run name <RUN> and differ only in their config hash.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import pytest

import faults_harness as h
from mtrec_jax.results.store import Store
from mtrec_jax.train import checkpoints

pytestmark = pytest.mark.slow

B = ("--set", "optimizer.learning_rate=0.01")


def _tree(folder) -> dict[str, str]:
  """{relative path: sha256} of every file under `folder`."""
  return {p.relative_to(folder).as_posix():
          hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_own_folder(folder, config_hash: str) -> None:
  """Everything in `folder` is of the config `config_hash`."""
  assert folder.name.endswith(f"@{config_hash}")
  res = h.result(folder)
  assert res["status"] == "done" and res["config_hash"] == config_hash
  # (In turn, A's folder is a copy of the reference's: its recorded
  # params_dir names the original, of the same name.)
  assert pathlib.Path(res["params_dir"]).parent.name == folder.name
  steps = checkpoints.saved_steps(folder)
  assert steps, folder
  for step in steps:
    meta = json.loads((folder / "checkpoints" / str(step) / "meta" /
                       "metadata").read_text())
    assert meta["config_hash"] == config_hash, (folder, step)


def _rows(store_path) -> dict[str, dict]:
  with Store(store_path) as s:
    rows = s.results(h.EXPERIMENT, latest_only=False)
    return {r["config_hash"]: {**r, "history": s.eval_history(r["run_id"])}
            for r in rows}


def test_two_configs_of_one_grid_point_in_turn_and_at_once(
    server, reference, fault_tmp):
  tmp = fault_tmp
  hash_a = h.result(reference)["config_hash"]
  # In turn: B trains in a copy of the reference's workdir and store.
  shutil.copytree(tmp / "reference", tmp / "turn",
                  ignore=shutil.ignore_patterns("log.txt"))
  a_turn = h.run_dir(tmp, "turn")
  before = _tree(a_turn)
  assert server.run("turn", *B) == 0, h.log(tmp, "turn")
  out = h.log(tmp, "turn")
  assert "deleting the checkpoints" not in out and "resuming" not in out
  # Both at once, in a fresh workdir and store.
  pids = [server.start("together", *extra) for extra in ((), B)]
  codes = [server.wait(p) for p in pids]
  assert codes == [0, 0], h.log(tmp, "together")[-3000:]

  for name in ("turn", "together"):
    folders = h.run_dirs(tmp, name)
    assert len(folders) == 2, folders  # one per config
    by_hash = {h.result(f)["config_hash"]: f for f in folders}
    assert hash_a in by_hash
    (hash_b,) = set(by_hash) - {hash_a}
    for config_hash, folder in by_hash.items():
      _check_own_folder(folder, config_hash)
    # Each folder's config.json is its own: A's is the reference's, B's
    # differs from it in the one key set.
    config_a, config_b = (json.loads((by_hash[x] / "config.json").read_text())
                          for x in (hash_a, hash_b))
    assert config_a == json.loads((reference / "config.json").read_text())
    assert config_b["optimizer"].pop("learning_rate") == 0.01
    assert config_a["optimizer"].pop("learning_rate") != 0.01
    assert config_a == config_b
    rows = _rows(tmp / name / "m.db")
    assert sorted(rows) == sorted(by_hash)  # one attempt each
    assert all(r["status"] == "done" for r in rows.values())
    # A ends as the reference did, its validation curve its own.
    assert h.comparable(h.result(by_hash[hash_a])) == h.comparable(
        h.result(reference))
    assert (by_hash[hash_a] / "metrics.jsonl").read_text() == (
        reference / "metrics.jsonl").read_text()
    ref_rows = _rows(tmp / "reference" / "m.db")
    assert rows[hash_a]["metrics"] == ref_rows[hash_a]["metrics"]
    assert rows[hash_a]["history"] == ref_rows[hash_a]["history"]
    assert rows[hash_b]["metrics"] != rows[hash_a]["metrics"]
    assert rows[hash_b]["history"] != rows[hash_a]["history"]
  # "At once" did overlap: each attempt started before the other ended.
  a, b = sorted(_rows(tmp / "together" / "m.db").values(),
                key=lambda r: r["config_hash"] != hash_a)
  assert a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]
  # Trained in turn, A's folder was not touched by B.
  assert _tree(a_turn) == before
  # B alone and B beside A: one result.
  b_turn = [f for f in h.run_dirs(tmp, "turn") if f != a_turn][0]
  b_together = [f for f in h.run_dirs(tmp, "together")
                if h.result(f)["config_hash"] != hash_a][0]
  assert h.comparable(h.result(b_turn)) == h.comparable(h.result(b_together))
  assert (b_turn / "metrics.jsonl").read_text() == (
      b_together / "metrics.jsonl").read_text()
