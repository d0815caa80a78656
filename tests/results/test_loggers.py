"""Loggers: TensorBoard event files hold the run's metrics (also across a
resume), W&B only when asked for, and the errors when it cannot be."""
from __future__ import annotations

import json
import math
import shutil
import sys
import types

import numpy as np
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.results import loggers
from mtrec_jax.train import checkpoints, loop


def _tiny(**overrides):
  base = {"data.name": "mmoe_synthetic", "model.name": "shared_bottom",
          "model.bottom_hidden": (8,), "model.tower_hidden": (4,),
          "train.batch_size": 32, "train.num_steps": 20,
          "train.eval_every": 10, "train.log_every": 5}
  cfg = config_lib.apply_overrides(config_lib.base_config(), base)
  with cfg.data.ignore_type():
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 128, 64, 64
  return config_lib.apply_overrides(cfg, overrides)


def _f32(x: float) -> float:
  return float(np.float32(x))


def _expected(workdir, result) -> dict[str, list[tuple[int, float]]]:
  """The scalars a run's event files should hold, from its other records."""
  want: dict[str, dict[int, float]] = {}
  for entry in result["train_log"]:
    for k, v in entry.items():
      if k != "step":
        want.setdefault(k, {})[entry["step"]] = v
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    for k, v in rec.items():
      if k.startswith("val/"):
        want.setdefault(k, {})[rec["step"]] = v
  for k, v in result["metrics"].items():
    want["final/" + k] = {result["steps"]: v}
  return {k: sorted((s, _f32(v)) for s, v in points.items())
          for k, points in want.items()}


def _starts(path) -> list[int]:
  """The steps of the SessionLog STARTs in an event file."""
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  events = [Event.FromString(r) for r in loggers._records(path)]
  return [e.step for e in events if e.HasField("session_log") and
          e.session_log.status == SessionLog.START]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One tiny run (20 steps, logs every 5, evaluations every 10), with the
  wandb import made to fail: off by default, it must not be tried."""
  workdir = tmp_path_factory.mktemp("run")
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(sys.modules, "wandb", None)
    result = loop.train_and_evaluate(_tiny(), workdir, progress=False)
  return workdir, result


def test_event_files_hold_the_runs_metrics(run):
  workdir, result = run
  assert result["status"] == "done"
  got = loggers.read_tensorboard_scalars(workdir / "tensorboard")
  want = _expected(workdir, result)
  assert got == want
  assert got["loss/task1"][0][0] == 5 and got["val/loss"][0][0] == 10
  assert {"weight/task1", "val/task2/mse", "final/test/task1/mse",
          "final/val/loss_ratio_sum"} <= set(got)
  assert len(list((workdir / "tensorboard").iterdir())) == 1
  assert not (workdir / "wandb").exists()


def test_a_resumed_run_rewrites_its_steps_and_a_restart_clears(run, tmp_path):
  first_dir, first = run
  workdir = tmp_path / "run"
  shutil.copytree(first_dir, workdir)
  # As if killed after step 20 was logged, before its checkpoint was saved.
  shutil.rmtree(checkpoints.checkpoints_dir(workdir) / "20")
  logs = []
  again = loop.train_and_evaluate(_tiny(), workdir, progress=False,
                                  resume=True, log=logs.append)
  assert logs == ["resuming from the checkpoint of step 10"]
  files = sorted((workdir / "tensorboard").iterdir())
  assert len(files) == 2  # steps 15 and 20 are in both
  assert [_starts(f) for f in files] == [[1], [11]]
  # Points at and after a rewritten step are the newer file's, so the
  # series are those of the run uninterrupted.
  want = _expected(first_dir, first)
  assert loggers.read_tensorboard_scalars(workdir / "tensorboard") == want
  assert _expected(workdir, again) == want
  # Without resume a run starts over, so earlier attempts' files go.
  loop.train_and_evaluate(_tiny(**{"train.num_steps": 0}), workdir,
                          progress=False)
  files = list((workdir / "tensorboard").iterdir())
  assert len(files) == 1
  got = loggers.read_tensorboard_scalars(workdir / "tensorboard")
  assert set(got) == {k for k in want if k.startswith("final/")}
  assert all(points[0][0] == 0 for points in got.values())


def test_nan_and_inf_are_written_as_they_are(tmp_path):
  with loggers.RunLogger([loggers.TensorBoardLogger(tmp_path)]) as log:
    log.scalars(3, {"a": math.nan, "b": -math.inf, "c": None, "d": 2})
    log.scalars(4, {"a": 1.0}, prefix="p/")
    # On disk before close: a killed run keeps what it logged.
    assert loggers.read_tensorboard_scalars(tmp_path)["p/a"] == [(4, 1.0)]
    with pytest.raises(TypeError, match="'e' = 'x' is not a number"):
      log.scalars(5, {"e": "x"})
  got = loggers.read_tensorboard_scalars(tmp_path)
  assert math.isnan(got["a"][0][1]) and got["b"] == [(3, -math.inf)]
  assert got["d"] == [(3, 2.0)] and got["p/a"] == [(4, 1.0)]
  assert "c" not in got  # None: no value


def _mask(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_records_are_checked(tmp_path):
  from tensorboardX.record_writer import masked_crc32c
  # The CRC-32C check value (RFC 3720), masked as TFRecord files mask it.
  assert masked_crc32c(b"123456789") == _mask(0xE3069283)
  with loggers.RunLogger([loggers.TensorBoardLogger(tmp_path)]) as log:
    log.scalars(1, {"a": 1.0})
  (path,) = tmp_path.iterdir()
  data = bytearray(path.read_bytes())
  # A torn last record (a killed writer) ends the file.
  path.write_bytes(data[:-3])
  assert loggers.read_tensorboard_scalars(tmp_path) == {}
  data[-6] ^= 0xFF  # a byte of the last record's data
  path.write_bytes(data)
  with pytest.raises(ValueError, match="bad data checksum .* damaged"):
    loggers.read_tensorboard_scalars(tmp_path)


def _with_log(**log):
  return config_lib.apply_overrides(config_lib.base_config(),
                                    {f"log.{k}": v for k, v in log.items()})


def test_defaults_tensorboard_with_a_run_dir_and_no_wandb(tmp_path,
                                                          monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  cfg = config_lib.base_config()
  assert not cfg.log.wandb and cfg.log.wandb_mode == "offline"
  sinks = loggers.make_loggers(cfg, tmp_path).sinks
  assert [type(s) for s in sinks] == [loggers.TensorBoardLogger]
  assert loggers.make_loggers(cfg, None).sinks == []
  assert loggers.make_loggers(_with_log(tensorboard=False), tmp_path).sinks == []
  assert list(tmp_path.iterdir()) == []  # files come with the first scalars


def test_wandb_without_the_package_fails_before_training(tmp_path,
                                                         monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
  with pytest.raises(ImportError, match="pip install wandb"):
    loggers.make_loggers(_with_log(wandb=True), tmp_path)
  with pytest.raises(ImportError, match="pip install wandb"):
    loop.train_and_evaluate(_tiny(**{"log.wandb": True}), tmp_path,
                            progress=False)
  assert not (tmp_path / "metrics.jsonl").exists()
  assert not (tmp_path / "tensorboard").exists()
  assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
  with pytest.raises(ValueError, match="wandb_mode 'ofline' is not one of"):
    loggers.make_loggers(_with_log(wandb=True, wandb_mode="ofline"), tmp_path)


def test_wandb_run_gets_the_scalars(tmp_path, monkeypatch):
  runs = []

  class FakeRun:
    def __init__(self, **kwargs):
      self.kwargs, self.logged, self.exit_code = kwargs, [], None
      runs.append(self)

    def log(self, data, step):
      self.logged.append((step, data))

    def finish(self, exit_code=0):
      self.exit_code = exit_code

  monkeypatch.setitem(sys.modules, "wandb",
                      types.SimpleNamespace(init=lambda **kw: FakeRun(**kw)))
  cfg = _with_log(wandb=True, tensorboard=False, wandb_entity="team")
  with loggers.make_loggers(cfg, tmp_path) as log:
    log.scalars(5, {"loss/a": 0.5, "val/a/auc": math.nan})
  (fake,) = runs
  kw = fake.kwargs
  assert (kw["project"], kw["entity"], kw["mode"]) == ("mtrec-jax", "team",
                                                       "offline")
  assert kw["dir"] == str(tmp_path) and kw["config"]["log"]["wandb"] is True
  assert fake.logged[0][0] == 5 and fake.logged[0][1]["loss/a"] == 0.5
  assert math.isnan(fake.logged[0][1]["val/a/auc"]) and fake.exit_code == 0
  with pytest.raises(RuntimeError):
    with loggers.make_loggers(cfg, tmp_path):
      raise RuntimeError("training failed")
  assert runs[1].exit_code == 1


def test_log_keys_are_not_hashed():
  base = config_lib.base_config()
  h = config_lib.config_hash(base)
  assert h == config_lib.config_hash(_with_log(wandb=True, tensorboard=False,
                                               wandb_mode="online"))
  # Configs from before the log section hash as they did.
  old = config_lib.ConfigDict(base.to_dict())
  del old["log"]
  assert config_lib.config_hash(old) == h
  assert loggers.log_options(old) == loggers.DEFAULTS
