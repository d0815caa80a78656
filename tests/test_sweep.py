"""`sweep.run_sweep` directly, with a stand-in trainer: claims, skips, force,
failures, resume, shards, batches and a multi-host follower, without training
(quickstart's grid, 2 models x 2 seeds; the trainer writes what
`train_and_evaluate` would and returns a result)."""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time

import pytest

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.results import run_files
from mtrec_jax.results.store import Store

SEEDS = sweep.Selection(seeds=(0, 1))
NAMES = ["model=shared_bottom,seed=0", "model=shared_bottom,seed=1",
         "model=mmoe,seed=0", "model=mmoe,seed=1"]  # the grid's order


class OneHost:
  primary = True

  def agree(self, run_id):
    return run_id


class FakeTrainer:
  """Writes metrics.jsonl and returns a done result whose metric is the
  seed; `outcome(run)` may return 'diverged', 'raise' (after writing a failed
  result.json, as train_and_evaluate does), 'raise-bare' or 'done'."""

  def __init__(self, outcome=lambda run: "done", group=1, hook=None):
    self.outcome, self.group, self.hook = outcome, group, hook
    self.calls: list[list[str]] = []  # run names handed over, per call
    self.kwargs: list[dict] = []

  def prepare(self, run):
    return ("prepared", run.name)

  def batches(self, runs):
    idx = list(range(len(runs)))
    return [idx[i:i + self.group] for i in range(0, len(idx), self.group)]

  def train(self, claimed, *, experiment, resume, progress, log):
    self.calls.append([c.run.name for c in claimed])
    self.kwargs.append(dict(resume=resume, progress=progress))
    if self.hook:
      self.hook(claimed)
    out = []
    for c in claimed:
      assert c.prepared == ("prepared", c.run.name)
      hash_, seed = sweep.run_key(c.run)
      res = {"experiment": experiment.name, "grid": c.run.grid, "seed": seed,
             "config_hash": hash_, "tasks": ["task1"]}
      run_files.append_jsonl(c.workdir / "metrics.jsonl",
                             {"step": 10, "val/task1/mse": 1.0 + seed})
      what = self.outcome(c.run)
      if what == "raise":
        run_files.write_json(c.workdir / "result.json", {
            **res, "status": "failed", "error": "RuntimeError: boom"})
        raise RuntimeError("boom")
      if what == "raise-bare":
        raise RuntimeError("bare")
      if what == "diverged":
        out.append({**res, "status": "diverged", "error": "nan at step 3",
                    "metrics": {}})
      else:
        out.append({**res, "status": "done",
                    "metrics": {"test/task1/mse": 0.5 + seed}})
    return out


@pytest.fixture(scope="module")
def exp():
  return experiment_lib.get_experiment("quickstart")


def _sweep(exp, tmp_path, trainer, **kw):
  kw.setdefault("selection", SEEDS)
  kw.setdefault("hosts", OneHost())
  return sweep.run_sweep(exp, store=tmp_path / "m.db",
                         workdir=tmp_path / "runs", trainer=trainer,
                         provenance={}, **kw)


def _attempts(path) -> list[tuple]:
  with sqlite3.connect(path) as conn:
    return conn.execute("SELECT run_name, attempt, status FROM runs "
                        "ORDER BY id").fetchall()


def test_trains_each_run_once_and_stores_it_with_its_evals(exp, tmp_path):
  lines = []
  trainer = FakeTrainer()
  out = _sweep(exp, tmp_path, trainer, resume=True, log=lines.append)
  assert trainer.calls == [[n] for n in NAMES]
  assert trainer.kwargs[0] == {"resume": True, "progress": False}
  assert [o.status for o in out.outcomes] == ["done"] * 4
  assert out.counts == {"done": 4} and not out.failed and not out.skipped
  assert [r["run_name"] for r in out.results] == NAMES
  assert [r["metrics"]["test/task1/mse"] for r in out.results] == [
      0.5, 1.5, 0.5, 1.5]
  assert out.root == tmp_path / "runs" / "quickstart"
  assert lines[0] == f"[1/4] quickstart {NAMES[0]}"
  with Store(tmp_path / "m.db") as s:
    (res,) = [r for r in s.results("quickstart") if r["run_name"] == NAMES[1]]
    assert s.eval_history(res["run_id"]) == [{"step": 10,
                                              "val/task1/mse": 2.0}]


def test_rerun_skips_done_runs_and_force_runs_them_again(exp, tmp_path):
  _sweep(exp, tmp_path, FakeTrainer())
  trainer, lines = FakeTrainer(), []
  out = _sweep(exp, tmp_path, trainer, log=lines.append)
  assert trainer.calls == []
  assert len(out.skipped) == 4 and out.counts == {"done": 4}
  assert all("skipped: already done in the store" in o.detail
             for o in out.skipped)
  assert sum("--force runs it again" in l for l in lines) == 4
  out = _sweep(exp, tmp_path, trainer, force=True,
               selection=sweep.Selection(seeds=(0,), only={"model": ["mmoe"]}))
  assert trainer.calls == [["model=mmoe,seed=0"]]
  assert [o.status for o in out.outcomes] == ["done"]
  assert _attempts(tmp_path / "m.db")[-1] == ("model=mmoe,seed=0", 2, "done")


def test_failure_is_stored_and_the_sweep_carries_on_then_retries(exp,
                                                                 tmp_path):
  # Run 1 raises after writing its failed result.json; run 2 raises bare.
  fate = {NAMES[1]: "raise", NAMES[2]: "raise-bare"}
  out = _sweep(exp, tmp_path, FakeTrainer(lambda r: fate.get(r.name, "done")))
  assert [o.status for o in out.outcomes] == ["done", "failed", "failed",
                                              "done"]
  assert [o.run.name for o in out.failed] == NAMES[1:3]
  assert out.counts == {"done": 2, "failed": 2}
  with Store(tmp_path / "m.db") as s:
    by_name = {r["run_name"]: r for r in s.results("quickstart")}
    recovered, bare = by_name[NAMES[1]], by_name[NAMES[2]]
    assert recovered["error"] == "RuntimeError: boom"
    assert s.eval_history(recovered["run_id"]) == [
        {"step": 10, "val/task1/mse": 2.0}]  # metrics.jsonl, stored too
    assert bare["error"] == "RuntimeError: bare"
  # A failed run is not final: the next sweep trains exactly those two. The
  # old failed result.json is older than the attempt: not taken for its own.
  old = time.time() - 3600
  (folder,) = (tmp_path / "runs" / "quickstart").glob(f"{NAMES[1]}@*")
  os.utime(folder / "result.json",
           (old, old))
  trainer = FakeTrainer(lambda r: "raise-bare" if r.name == NAMES[1]
                        else "done")
  out = _sweep(exp, tmp_path, trainer)
  assert trainer.calls == [[NAMES[1]], [NAMES[2]]]
  with Store(tmp_path / "m.db") as s:
    (res,) = [r for r in s.results("quickstart") if r["run_name"] == NAMES[1]]
  assert res["attempt"] == 2 and res["error"] == "RuntimeError: bare"


def test_diverged_is_final_and_not_a_failure(exp, tmp_path):
  out = _sweep(exp, tmp_path, FakeTrainer(lambda r: "diverged"),
               selection=sweep.Selection(seeds=(0,)))
  assert [o.status for o in out.outcomes] == ["diverged", "diverged"]
  assert not out.failed and out.counts == {"diverged": 2}
  trainer = FakeTrainer()
  out = _sweep(exp, tmp_path, trainer, selection=sweep.Selection(seeds=(0,)))
  assert trainer.calls == [] and len(out.skipped) == 2


def test_a_run_held_by_a_live_process_is_skipped_and_force_takes_it_over(
    exp, tmp_path):
  """Issue 16 defect 6: --force takes over a running attempt explicitly
  (before, it was skipped even with --force); the owner it replaced can no
  longer record an outcome."""
  run = SEEDS.runs(exp)[0]
  with Store(tmp_path / "m.db") as s:  # this (live) process holds run 0
    old = s.claim("quickstart", run.name, run.grid, {}, *sweep.run_key(run))
  trainer = FakeTrainer()
  out = _sweep(exp, tmp_path, trainer)
  assert trainer.calls == [[n] for n in NAMES[1:]]
  (skip,) = out.skipped
  assert skip.run.name == NAMES[0]
  assert "another process is running it" in skip.detail
  assert out.counts == {"done": 3, "running": 1}
  trainer = FakeTrainer()
  out = _sweep(exp, tmp_path, trainer, force=True)
  assert trainer.calls == [[n] for n in NAMES]
  assert out.counts == {"done": 4}
  with Store(tmp_path / "m.db") as s:
    first = s.results("quickstart", latest_only=False)[0]
    assert (first["run_id"], first["status"]) == (old, "failed")
    assert "forced while alive" in first["error"]
    with pytest.raises(ValueError, match="was taken over by attempt 2"):
      s.finish(old, {"status": "done", "metrics": {}})
    with pytest.raises(ValueError, match="was taken over"):
      s.preempt(old, "late")


def test_the_result_store_refuses_is_a_failure(exp, tmp_path):
  class WrongHash(FakeTrainer):
    def train(self, claimed, **kw):
      return [{**r, "config_hash": "other"}
              for r in super().train(claimed, **kw)]

  lines = []
  out = _sweep(exp, tmp_path, WrongHash(), log=lines.append,
               selection=sweep.Selection(seeds=(0,), only={"model": ["mmoe"]}))
  (o,) = out.failed
  assert o.status == "done" and not o.stored
  assert any("could not store the result" in l for l in lines)
  assert _attempts(tmp_path / "m.db") == [("model=mmoe,seed=0", 1, "failed")]


def test_shards_split_the_grid_and_share_the_store(exp, tmp_path):
  trainers = [FakeTrainer(), FakeTrainer()]
  outs = [_sweep(exp, tmp_path, t, shard=(i, 2))
          for i, t in enumerate(trainers)]
  assert trainers[0].calls == [[NAMES[0]], [NAMES[2]]]
  assert trainers[1].calls == [[NAMES[1]], [NAMES[3]]]
  assert [o.run.name for o in outs[0].outcomes] == [NAMES[0], NAMES[2]]
  # Shard 0 ran first: its table shows shard 1's runs as missing.
  assert outs[0].counts == {"done": 2, "missing": 2}
  assert outs[1].counts == {"done": 4}
  assert sorted(r[0] for r in _attempts(tmp_path / "m.db")) == sorted(NAMES)


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_bad_shard_or_bad_run_fails_before_anything_is_written(exp, tmp_path,
                                                               shard):
  with pytest.raises(ValueError, match="shard"):
    _sweep(exp, tmp_path, FakeTrainer(), shard=shard)

  class Refuses(FakeTrainer):
    def prepare(self, run):
      if run.name == NAMES[3]:
        raise ValueError("bad key in the last run")
      return super().prepare(run)

  with pytest.raises(ValueError, match="bad key"):
    _sweep(exp, tmp_path, Refuses())
  assert list(tmp_path.iterdir()) == []


def test_parse_shard():
  assert sweep.parse_shard(None) == (0, 1)
  assert sweep.parse_shard(" 3 / 4 ") == (3, 4)
  for text, words in [("4/4", "0..3"), ("1", "write I/N"),
                      ("0/0", "at least 1")]:
    with pytest.raises(ValueError, match=words):
      sweep.parse_shard(text)


def test_a_batch_is_handed_to_the_trainer_at_once(exp, tmp_path):
  """The slot population training uses: runs grouped by `batches` reach
  `train` together, and each is stored as its own run; a member already done
  is skipped and the rest of its batch still trains."""
  _sweep(exp, tmp_path, FakeTrainer(),
         selection=sweep.Selection(seeds=(1,), only={"model": ["mmoe"]}))
  trainer = FakeTrainer(group=2)
  out = _sweep(exp, tmp_path, trainer)
  assert trainer.calls == [NAMES[0:2], NAMES[2:3]]
  assert [o.status for o in out.outcomes] == ["done"] * 3 + ["skipped"]
  assert [(n, a) for n, a, _ in _attempts(tmp_path / "m.db")] == [
      (NAMES[3], 1), (NAMES[0], 1), (NAMES[1], 1), (NAMES[2], 1)]

  class Short(FakeTrainer):
    def train(self, claimed, **kw):
      return super().train(claimed, **kw)[:1]

  out = _sweep(exp, tmp_path / "short", Short(group=2),
               selection=sweep.Selection(seeds=(0, 1), only={
                   "model": ["mmoe"]}))
  assert [o.status for o in out.failed] == ["failed", "failed"]
  assert "returned 1 results for 2 claimed runs" in out.failed[0].detail


def test_heartbeat_keeps_a_long_run_fresh(exp, tmp_path, monkeypatch):
  monkeypatch.setattr(sweep, "HEARTBEAT_EVERY_S", 0.02)
  beats = []

  def hook(claimed):
    with Store(tmp_path / "m.db") as s:
      for _ in range(2):
        beats.append(s.conn.execute(
            "SELECT heartbeat_at FROM runs WHERE id = ?",
            (claimed[0].run_id,)).fetchone()[0])
        time.sleep(0.3)

  _sweep(exp, tmp_path, FakeTrainer(hook=hook),
         selection=sweep.Selection(seeds=(0,), only={"model": ["mmoe"]}))
  assert beats[1] > beats[0]


def test_keyboard_interrupt_marks_the_claimed_runs_failed(exp, tmp_path):
  def hook(claimed):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _sweep(exp, tmp_path, FakeTrainer(hook=hook))
  with Store(tmp_path / "m.db") as s:
    (res,) = s.results("quickstart")
  assert res["status"] == "failed"
  assert res["error"] == "interrupted (KeyboardInterrupt)"


class PairedHosts:
  """Two in-process 'hosts': process 0 sends each claim, the follower
  receives it, as `broadcast_one_to_all` does across JAX processes."""

  def __init__(self, primary: bool, channel: queue.Queue):
    self.primary, self.channel = primary, channel

  def agree(self, run_id):
    if self.primary:
      self.channel.put(run_id)
      return run_id
    return self.channel.get(timeout=30)


def test_multi_host_follower_trains_what_process_zero_claims(exp, tmp_path):
  # Process 0's store already has one run done: both hosts skip it.
  _sweep(exp, tmp_path, FakeTrainer(),
         selection=sweep.Selection(seeds=(0,), only={"model": ["mmoe"]}))
  channel: queue.Queue = queue.Queue()
  trainers = {True: FakeTrainer(), False: FakeTrainer()}
  outs, logs = {}, {True: [], False: []}

  def host(primary):
    store = tmp_path / "m.db" if primary else tmp_path / "follower" / "m.db"
    outs[primary] = sweep.run_sweep(
        exp, selection=SEEDS, store=store,
        workdir=tmp_path / ("runs" if primary else "f"),
        trainer=trainers[primary], provenance={},
        hosts=PairedHosts(primary, channel), log=logs[primary].append)

  threads = [threading.Thread(target=host, args=(p,)) for p in (True, False)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  want = [[n] for n in NAMES if n != "model=mmoe,seed=0"]
  assert trainers[True].calls == trainers[False].calls == want
  lead, follower = outs[True], outs[False]
  assert lead.primary and lead.counts == {"done": 4}
  assert not follower.primary and follower.results == ()
  assert follower.store_path is None and logs[False] == []
  assert [o.status for o in follower.outcomes] == [
      "done", "done", "skipped", "done"]
  assert not (tmp_path / "follower").exists()  # it never opened a store
  assert len(_attempts(tmp_path / "m.db")) == 4  # one writer, once each


def test_resume_adopts_an_unfinished_run_folder_of_the_old_layout(exp,
                                                                  tmp_path):
  """Before issue 16 a run's folder was root/<run name>; --resume moves an
  unfinished one (config.json of this config, no params/) to
  <run name>@<config hash> and continues there; a finished one stays (an
  init_from may name it), and so does another config's."""
  runs = SEEDS.runs(exp)
  root = tmp_path / "runs" / "quickstart"
  config = config_lib.to_dict(runs[0].config)
  run_files.write_json(root / runs[0].name / "config.json", config)
  run_files.write_json(root / runs[0].name / "checkpoints" / "x.json", {})
  run_files.write_json(root / runs[1].name / "config.json",
                       config_lib.to_dict(runs[1].config))
  (root / runs[1].name / "params").mkdir()
  run_files.write_json(root / runs[2].name / "config.json", config)
  _sweep(exp, tmp_path, FakeTrainer(), resume=True)
  assert not (root / runs[0].name).exists()
  assert (root / runs[0].dir_name / "checkpoints" / "x.json").exists()
  assert (root / runs[0].dir_name / "metrics.jsonl").exists()  # trained there
  assert (root / runs[1].name / "params").is_dir()
  assert (root / runs[2].name / "config.json").exists()
