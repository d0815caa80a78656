"""The `mtrec` command end to end on a tiny config."""
import json

import pytest

from mtrec_jax import cli

TINY = ["--set", "train.num_steps=30", "--set", "train.eval_every=10",
        "--set", "data.n_train=512", "--set", "data.n_val=128",
        "--set", "data.n_test=128", "--set", "train.batch_size=64",
        "--no-progress"]


def _run(tmp_path, *extra):
  return cli.main(["run", "quickstart", "--workdir", str(tmp_path),
                   "--store", str(tmp_path / "mtrec.db"), *TINY, *extra])


def _folder(root, run):
  """The run folder of grid point `run`: <run>@<config hash> (one config)."""
  (folder,) = (root / "quickstart").glob(f"{run}@*")
  return folder


def _result(tmp_path, run):
  return json.loads((_folder(tmp_path, run) / "result.json").read_text())


def test_list_shows_experiments(capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  for name in ("quickstart", "mmoe-synthetic", "gradnorm-toy"):
    assert name in out


def test_run_writes_outputs_and_is_deterministic(tmp_path, capsys):
  assert _run(tmp_path, "--only", "model=mmoe", "--seed", "0") == 0
  out = capsys.readouterr().out
  assert "task1 mse" in out and "mmoe" in out
  run = "model=mmoe,seed=0"
  res = _result(tmp_path, run)
  assert res["status"] == "done"
  assert res["experiment"] == "quickstart"
  assert res["grid"] == {"model": "mmoe", "seed": 0}
  assert res["steps"] == 30
  for key in ("test/task1/mse", "val/task2/rmse", "test/task2/mae"):
    assert isinstance(res["metrics"][key], float)
  for key in ("config_hash", "wall_time_s", "git", "packages", "devices"):
    assert key in res
  lines = (_folder(tmp_path, run) / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [10, 20, 30]
  config = json.loads((_folder(tmp_path, run) / "config.json").read_text())
  assert config["train"]["num_steps"] == 30
  # Same seed, same numbers; another seed, other numbers.
  again = tmp_path / "again"
  assert cli.main(["run", "quickstart", "--workdir", str(again),
                   "--store", str(again / "mtrec.db"), *TINY,
                   "--only", "model=mmoe", "--seeds", "0,1"]) == 0
  same = _result(again, run)
  other = _result(again, "model=mmoe,seed=1")
  assert same["metrics"] == res["metrics"]
  assert other["metrics"] != res["metrics"]


@pytest.mark.parametrize("argv, message", [
    (["run", "quikstart"], "quickstart"),
    (["run", "quickstart", "--set", "model.num_expert=3"], "model.num_experts"),
    (["run", "quickstart", "--set", "model.name=mmo"], "mmoe"),
    (["run", "quickstart", "--set", "strategy.name=meen"], "mean"),
    (["run", "quickstart", "--only", "model=mmo"], "mmoe"),
    (["run", "quickstart", "--set", "train.num_steps=ten"], "train.num_steps"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, argv, message):
  code = cli.main(argv + ["--workdir", str(tmp_path / "out")])
  assert code == 2
  err = capsys.readouterr().err
  assert message in err
  assert not (tmp_path / "out").exists()


def test_missing_real_data_is_a_clear_error_and_writes_nothing(
    tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("MTREC_DATA_DIR", raising=False)
  code = cli.main(["run", "census-mtl", "--seed", "0", "--workdir",
                   str(tmp_path / "runs")])
  assert code == 2
  assert "set $MTREC_DATA_DIR" in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()
