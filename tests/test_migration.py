"""The one-time store migration to the canonical run identity (schema 2).

`tests/fixtures/store_v1.db` was written by the code of commit 4dc23b6 (its
`Store` and its `config_hash`; see `tests/fixtures/make_store_v1.py`).  It
must open, migrate, keep every attempt with every value, and a rerun of its
experiments must skip the runs it has done.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sqlite3

import pytest

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.results import store as store_lib
from mtrec_jax.results.store import Store

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
V1_ADDED = {"aux.next_all.num_negatives": 100}


def _snapshot(path) -> dict:
  """Everything a v1 store holds, read with plain sqlite3 (no migration)."""
  with sqlite3.connect(path) as conn:
    conn.row_factory = sqlite3.Row
    runs = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM runs")}
    series = sorted(tuple(r) for r in conn.execute("SELECT * FROM series"))
    final = sorted(tuple(r) for r in conn.execute(
        "SELECT * FROM final_metrics"))
    version = conn.execute("PRAGMA user_version").fetchone()[0]
  return {"runs": runs, "series": series, "final": final, "version": version}


@pytest.fixture
def v1_store(tmp_path):
  path = tmp_path / "store.db"
  shutil.copyfile(FIXTURES / "store_v1.db", path)
  return path


def test_fixture_is_a_v1_store(v1_store):
  snap = _snapshot(v1_store)
  assert snap["version"] == 1
  assert len(snap["runs"]) == 15 and snap["final"] and snap["series"]


def test_migration_keeps_every_attempt_and_value(v1_store):
  before = _snapshot(v1_store)
  Store(v1_store).close()
  after = _snapshot(v1_store)
  assert after["version"] == store_lib.SCHEMA_VERSION >= 2
  assert after["series"] == before["series"]
  assert after["final"] == before["final"]
  assert after["runs"].keys() == before["runs"].keys()
  for run_id, old in before["runs"].items():
    new = after["runs"][run_id]
    assert new["config_hash_v1"] == old["config_hash"]
    assert new["config_hash"] == store_lib.stored_config_hash(
        json.loads(old["config"]))
    changed = {k for k in old if old[k] != new[k]}
    assert changed <= {"config_hash", "result"}, (run_id, changed)
    if old["result"] is not None:  # the result JSON differs in its hash only
      o, n = json.loads(old["result"]), json.loads(new["result"])
      assert n.pop("config_hash") == new["config_hash"]
      o.pop("config_hash")
      assert n == o


def test_rerun_skips_the_done_runs(v1_store):
  before = _snapshot(v1_store)
  with Store(v1_store) as s:
    for old in before["runs"].values():
      if old["status"] not in store_lib.FINAL or "num_steps" in old[
          "run_name"]:
        continue
      exp = experiment_lib.get_experiment(old["experiment"])
      runs = [r for r in exp.runs() if r.name == old["run_name"]]
      assert len(runs) == 1, old["run_name"]
      run = runs[0]
      h = config_lib.config_hash(run.config)
      (st,) = s.status(exp.name, [(run.name, h, run.grid["seed"])])
      assert st.status == old["status"], (run.name, st)
      assert s.claim(exp.name, run.name, run.grid, config_lib.to_dict(
          run.config), h, run.grid["seed"]) is None, run.name
    # The attempt whose owner died is taken over (and the stored config of
    # the stale quickstart run is not in the grid: a fresh quickstart run
    # of that grid point is done, not missing).
    exp = experiment_lib.get_experiment("uncertainty-toy")
    run = exp.runs()[0]
    h = config_lib.config_hash(run.config)
    assert s.status(exp.name, [(run.name, h, 0)])[0].status == "failed"
    assert s.claim(exp.name, run.name, run.grid, {}, h, 0) is not None


def test_done_results_read_back_unchanged(v1_store):
  before = _snapshot(v1_store)
  with Store(v1_store) as s:
    for exp in {r["experiment"] for r in before["runs"].values()}:
      for res in s.results(exp, latest_only=False):
        old = before["runs"][res["run_id"]]
        if old["result"] is None:
          continue
        stored = json.loads(old["result"])
        assert res["metrics"] == stored["metrics"]
        assert res["train_log"] == stored["train_log"]
        assert res["config_hash"] != stored["config_hash"]


def test_migration_runs_once(v1_store):
  Store(v1_store).close()
  first = _snapshot(v1_store)
  Store(v1_store).close()
  assert _snapshot(v1_store) == first


def _v1_store_with(path, configs: list[tuple[str, dict, str]]) -> None:
  """A schema-1 store holding one done attempt per (run name, config, hash),
  as the v1 code wrote them (same experiment, seed 0)."""
  with sqlite3.connect(path) as conn:
    for statement in store_lib._MIGRATIONS[1]:
      conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    for i, (name, cfg, h) in enumerate(configs):
      conn.execute(
          "INSERT INTO runs (experiment, run_name, config_hash, seed, "
          "attempt, status, grid, config, hostname, pid, started_at, "
          "heartbeat_at, result) VALUES ('e', ?, ?, 0, 1, 'done', '{}', ?, "
          "'h', 1, ?, ?, ?)",
          (name, h, json.dumps(cfg), float(i), float(i),
           json.dumps({"config_hash": h, "metrics": {"m": i}})))
      conn.execute("INSERT INTO final_metrics VALUES (?, 'm', ?)",
                   (i + 1, float(i)))


def test_runs_that_now_share_a_hash_become_attempts_of_one(tmp_path):
  """Two v1 runs that differed only in another model's field (the v1 hash
  covered every model's fields) are one run now: attempts 1 and 2, the
  later one its result, the earlier superseded; both kept."""
  base = config_lib.to_dict(config_lib.apply_overrides(
      config_lib.base_config(), {"model.name": "shared_bottom"}))
  other = json.loads(json.dumps(base))
  other["model"]["num_experts"] += 1  # MMoE's field
  path = tmp_path / "s.db"
  _v1_store_with(path, [("a", base, "old1"), ("a", other, "old2")])
  with Store(path) as s:
    rows = s.conn.execute("SELECT id, config_hash, config_hash_v1, attempt, "
                          "superseded FROM runs ORDER BY id").fetchall()
    h = config_lib.config_hash(base)
    assert [tuple(r) for r in rows] == [(1, h, "old1", 1, 1),
                                        (2, h, "old2", 2, 0)]
    (res,) = s.results("e")
    assert res["run_id"] == 2 and res["metrics"] == {"m": 1}
    assert len(s.results("e", latest_only=False)) == 2


def test_a_config_without_identity_keeps_its_hash(tmp_path):
  cfg = config_lib.to_dict(config_lib.base_config())
  cfg["model"]["name"] = "a_model_removed_since"
  path = tmp_path / "s.db"
  _v1_store_with(path, [("a", cfg, "old1")])
  with pytest.warns(RuntimeWarning, match="keeps its config hash old1"):
    s = Store(path)
  with s:
    row = s.conn.execute("SELECT config_hash, config_hash_v1 FROM runs"
                         ).fetchone()
    assert tuple(row) == ("old1", "old1")


def test_a_config_stored_before_a_key_was_added_matches_todays():
  """The fixture's ml100k-mtl ssl run was stored without
  aux.next_all.num_negatives (added later with default 100)."""
  run = [r for r in experiment_lib.get_experiment("ml100k-mtl").runs()
         if r.name == "tasks=ssl,seed=0"][0]
  old = config_lib.to_dict(run.config)
  del old["aux"]["next_all"]["num_negatives"]
  assert store_lib.stored_config_hash(old) == config_lib.config_hash(
      run.config)
  assert config_lib.config_hash(old) != config_lib.config_hash(run.config)


def test_keys_added_since_v1_are_filled_with_their_defaults():
  """Every key in ADDED_KEYS holds that default in today's base config (the
  default it was added with, which computes what ran before it)."""
  base = config_lib.to_dict(config_lib.base_config())
  for key, default in store_lib.ADDED_KEYS.items():
    node = base
    for part in key.split("."):
      node = node[part]
    assert node == default, key


def test_added_keys_fill_only_missing_keys():
  fill = store_lib._with_added_keys
  cfg = {"aux": {"next_all": {"loss": "softmax"}}, "model": {}}
  assert fill(cfg, V1_ADDED)["aux"]["next_all"]["num_negatives"] == 100
  assert "num_negatives" not in cfg["aux"]["next_all"]  # a copy
  cfg["aux"]["next_all"]["num_negatives"] = 7
  assert fill(cfg, V1_ADDED)["aux"]["next_all"]["num_negatives"] == 7
  assert fill({"aux": {}}, V1_ADDED) == {"aux": {}}


@pytest.mark.parametrize("experiment,run_name,key,schema", [
    # ml100k-mtl's runs were stored before the key; they ran separate passes.
    ("ml100k-mtl", "tasks=all,seed=0", "aux.next_all.shared_pass", 4),
    # Every run before the key drew its dropout masks with Threefry.
    ("ml100k-sasrec-ref", "seed=0", "train.dropout_bits", 5),
    # Every run before the key compiled its step with XLA's defaults.
    ("ml100k-strategies", "strategy=single_task,seed=0", "train.compiler", 6),
])
def test_runs_stored_before_a_key_keep_their_identity(experiment, run_name,
                                                       key, schema):
  """Schemas 4-6: a stored config without the key hashes as the registered
  run (the key at its ADDED_KEYS default), not as a plain config hash."""
  (run,) = [r for r in experiment_lib.get_experiment(experiment).runs()
            if r.name == run_name]
  old = config_lib.to_dict(run.config)
  *path, leaf = key.split(".")
  node = old
  for part in path:
    node = node[part]
  del node[leaf]
  assert store_lib.stored_config_hash(old) == config_lib.config_hash(
      run.config)
  assert config_lib.config_hash(old) != config_lib.config_hash(run.config)
  assert schema in store_lib._MIGRATIONS and store_lib.SCHEMA_VERSION >= schema
