"""Loading a trained run, recommending, exporting (mtrec_jax/serve).

A tiny `ml100k-mtl` run (its config, next_item task set, shrunk: max_len 5,
8 units, 2 steps) trains once per module on official-format MovieLens files
written here (no real data needed).  Recommendations are checked against an
independent brute-force numpy ranking of `predict`'s outputs; the export is
reloaded in a fresh process that imports only jax, numpy and safetensors.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mtrec_jax import cli
from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.registry import EXPERIMENTS
from mtrec_jax.serve import load as load_lib
from mtrec_jax.serve import recommend as rec
from mtrec_jax.train.loop import train_and_evaluate
from mtrec_jax.train.evaluate import make_predict_fn

# End to end: each module trains its runs (a few seconds of compiling each).
pytestmark = pytest.mark.slow

NUM_USERS, NUM_ITEMS, GENRES = 12, 130, ("unknown", "Action", "Comedy")


def write_movielens(folder: pathlib.Path, seed: int = 0) -> None:
  """Official-format u.* files: 12 users, 6..14 distinct items each."""
  rng = np.random.default_rng(seed)
  lines = []
  for user in range(1, NUM_USERS + 1):
    items = rng.choice(NUM_ITEMS, int(rng.integers(6, 15)), replace=False) + 1
    for t, item in enumerate(items):
      lines.append(f"{user}\t{item}\t{rng.integers(1, 6)}\t{100 + t}\n")
  folder.mkdir(parents=True)
  (folder / "u.data").write_text("".join(lines))
  genres = rng.integers(0, 2, size=(NUM_ITEMS + 1, len(GENRES)))
  (folder / "u.item").write_text("".join(
      f"{i}|Film number {i} (1990)|01-Jan-1990||http://x|"
      + "|".join(map(str, genres[i])) + "\n" for i in range(1, NUM_ITEMS + 1)))
  (folder / "u.user").write_text("".join(
      f"{u}|25|M|writer|12345\n" for u in range(1, NUM_USERS + 1)))
  (folder / "u.genre").write_text(
      "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
  (folder / "u.occupation").write_text("writer\n")


def tiny_config(data_dir: pathlib.Path, tfds_dir: pathlib.Path):
  """ml100k-mtl's next_item run, shrunk to train in a second."""
  exp = experiment_lib.get_experiment("ml100k-mtl")
  (point,) = exp.runs(only={"tasks": ["next_item"]}, seeds=(0,))
  c = config_lib.apply_overrides(point.config, {
      "data.data_dir": str(data_dir), "data.tfds_dir": str(tfds_dir),
      "data.max_len": 5, "data.embed_dim": 8, "model.encoder.hidden_dim": 8,
      "model.encoder.mlp_dim": 8, "train.batch_size": 4,
      "train.num_steps": 2, "train.eval_every": 2,
      "train.eval_batch_size": 16, "train.keep_checkpoints": 0,
      "log.tensorboard": False, "optimizer.learning_rate": 0.05})
  c.data.strict_counts = False  # a small sample of the official format
  return c


EXPERIMENT = "serve-tiny-ml100k"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  """One trained run, through `mtrec run`'s sweep: (store path, workdir).
  Its experiment is ml100k-mtl's next_item grid point, shrunk
  (`tiny_config`), registered for this module only."""
  from mtrec_jax import sweep
  root = tmp_path_factory.mktemp("serve")
  write_movielens(root / "ml-100k")
  exp = experiment_lib.Experiment(
      tiny_config(root / "ml-100k", root / "tfds"),
      axes=(experiment_lib.Axis("tasks", None, {"next_item": {}}),),
      seeds=(0,), name=EXPERIMENT)
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(EXPERIMENTS._items, EXPERIMENT, lambda: exp)
    out = sweep.run_sweep(EXPERIMENT, store=root / "db", workdir=root / "w",
                          progress=False)
    assert not out.failed
    yield root / "db", root / "w"


@pytest.fixture(scope="module")
def trained(store):
  (run_dir,) = (store[1] / EXPERIMENT).iterdir()
  return run_dir


@pytest.fixture(scope="module")
def loaded(trained):
  return load_lib.load_run(trained)


def brute_force_top_k(probs: np.ndarray, seen, k: int):
  """Independent reference: float64 scores, seen items and id 0 removed,
  a stable descending sort (lower id first on ties)."""
  s = np.asarray(probs, np.float64).copy()
  s[0] = -np.inf
  s[np.asarray(list(seen), int)] = -np.inf
  order = np.argsort(-s, kind="stable")
  return order[:k], s[order[:k]]


def test_predict_matches_training_evaluation(trained, loaded):
  # The loaded model predicts what the trainer's own evaluation predicted.
  test = loaded.dataset.splits["test"]
  tasks = tuple(loaded.tasks)
  want, _ = make_predict_fn(loaded.model, tasks)(loaded.params, test)
  got = loaded.predict(test)
  assert set(got) == {"next_all"} == set(want)
  np.testing.assert_array_equal(got["next_all"], np.asarray(want["next_all"]))
  assert got["next_all"].shape == (NUM_USERS, NUM_ITEMS + 1)
  assert set(loaded.inputs) == {"hist_items"}  # all the model reads
  # The parameters are the run's saved ones.
  from mtrec_jax.train import checkpoints
  saved = load_lib.flat_params(checkpoints.load_params(trained))
  for name, value in load_lib.flat_params(loaded.params).items():
    np.testing.assert_array_equal(value, saved[name])


@pytest.mark.parametrize("k", [1, 10])
def test_recommend_user_matches_brute_force_ranking(loaded, k):
  test = loaded.dataset.splits["test"]
  for user in (1, 5, NUM_USERS):
    i = int(np.flatnonzero(test["user"] == user)[0])
    history = list(test["exclude"][i][test["exclude"][i] > 0]) + [
        int(test["target_item"][i])]
    np.testing.assert_array_equal(rec.user_history(loaded, user), history)
    out = loaded.recommend(user=user, k=k)
    assert len(out["items"]) == k == len(set(out["items"]))
    assert not set(out["items"]) & set(history)  # unseen
    assert 0 not in out["items"]
    # Independent: predict on the user's window, rank in numpy.
    window = np.zeros((1, 5), np.int32)
    window[0, -min(5, len(history)):] = history[-5:]
    probs = loaded.predict({"hist_items": window})["next_all"][0]
    items, scores = brute_force_top_k(probs, history, k)
    np.testing.assert_array_equal(out["items"], items)
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-6)


def test_recommend_history_and_exclude_seen(loaded):
  history = [3, 7, 7, 12]
  out = loaded.recommend(history=history, k=5)
  probs = loaded.predict({"hist_items": np.array([[0, 3, 7, 7, 12]])}
                         )["next_all"][0]
  items, _ = brute_force_top_k(probs, history, 5)
  np.testing.assert_array_equal(out["items"], items)
  everything = loaded.recommend(history=history, k=NUM_ITEMS,
                                exclude_seen=False)
  items, _ = brute_force_top_k(probs, [], NUM_ITEMS)
  np.testing.assert_array_equal(everything["items"], items)
  assert sorted(everything["items"]) == list(range(1, NUM_ITEMS + 1))
  # The empty history is a valid (cold-start) request.
  assert len(loaded.recommend(history=[], k=3)["items"]) == 3


def test_recommend_many_equals_one_by_one(loaded):
  requests = [{"user": u} for u in range(1, NUM_USERS + 1)] + [
      {"history": [1, 2]}]
  many = rec.recommend_many(loaded, requests, k=4, batch_size=5)
  for r, got in zip(requests, many):
    one = rec.recommend(loaded, k=4, **r)
    assert got["items"] == one["items"]
    # Other batch shapes round differently (float32 ulps).
    np.testing.assert_allclose(got["scores"], one["scores"], rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "needs user="), ({"user": 999}, "user 999 is not a user"),
    ({"history": [0, 3]}, "item ids in 1..130"),
    ({"user": 1, "k": 0}, "k must be an int"),
    ({"user": 1, "k": NUM_ITEMS}, "leaves only"),
    ({"user": 1, "task": "rating"}, "not a next-item task")])
def test_recommend_bad_input(loaded, kwargs, message):
  with pytest.raises(ValueError, match=message):
    loaded.recommend(**kwargs)


def test_item_embeddings_are_the_scoring_table(loaded):
  table = loaded.item_embeddings()
  assert table.shape == (NUM_ITEMS + 1, 8) and table.dtype == np.float32
  want = loaded.params["shared"]["feature_encoder"]
  flat = load_lib.flat_params(want)
  assert any(np.array_equal(table, v) for v in flat.values())


def test_config_that_no_longer_resolves_names_the_key(trained, tmp_path):
  import shutil
  for key, value, message in [
      (("model", "name"), "shared_botom", "'model.name'"),
      (("model", "encoder", "num_layerz"), 2, "model.encoder.num_layerz"),
      (("train", "bacth_size"), 4, "train.bacth_size"),
      (("aux", "tasks"), ["next_al"], "'aux.tasks'"),
      (("data", "name"), "movielenz", "'data.name'")]:
    copy = tmp_path / "_".join(key)
    shutil.copytree(trained, copy)
    cfg = json.loads((copy / "config.json").read_text())
    node = cfg
    for part in key[:-1]:
      node = node[part]
    node[key[-1]] = value
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(load_lib.RunConfigError, match=message):
      load_lib.load_run(copy)
  # A text model folder for a run without item text is a mistake.
  with pytest.raises(ValueError, match="has no item text.*--text-model-dir"):
    load_lib.load_run(trained, text_model_dir=tmp_path)
  # A config that builds another model than the saved parameters'.
  copy = tmp_path / "wider"
  shutil.copytree(trained, copy)
  cfg = json.loads((copy / "config.json").read_text())
  cfg["model"]["encoder"]["mlp_dim"] = 16
  (copy / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"saved parameter '.*' \(\[8\]\) "
                     r"does not match .* \(\[16\]\)"):
    load_lib.load_run(copy)


def test_load_from_store_grid_point(store, trained, tmp_path):
  # An experiment + grid point resolves through the store's params_dir,
  # else through the workdir.
  db, workdir = store
  import mtrec_jax
  run = mtrec_jax.load_run(EXPERIMENT, where={"tasks": "next_item"}, seed=0,
                           store=db, workdir=tmp_path / "nowhere")
  assert run.run_dir == trained.resolve()
  run = load_lib.load_run(EXPERIMENT, where={"tasks": "next_item"}, seed=0,
                          store=tmp_path / "no.db", workdir=workdir)
  assert run.run_dir == trained.resolve()
  with pytest.raises(FileNotFoundError, match="no finished run"):
    load_lib.load_run(EXPERIMENT, where={"tasks": "next_item"}, seed=3,
                      store=db, workdir=workdir)
  with pytest.raises(KeyError, match="has no value 'all'"):
    load_lib.load_run(EXPERIMENT, where={"tasks": "all"}, store=db)
  with pytest.raises(FileNotFoundError, match="neither a run folder"):
    load_lib.load_run(tmp_path / "missing")


# ------------------------------------------------------------------ CLI
def test_cli_recommend_user_prints_titles_of_unseen_top_k(trained, loaded,
                                                          capsys):
  assert cli.main(["recommend", str(trained), "--user", "5", "-k", "3"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert "top 3 unseen items for user 5" in lines[0]
  history = rec.user_history(loaded, 5)
  probs = loaded.predict({"hist_items": rec.window(history, 5)[None]}
                         )["next_all"][0]
  items, _ = brute_force_top_k(probs, history, 3)
  assert len(lines) == 4
  for line, item in zip(lines[1:], items):
    rank, got, score, title = line.split(maxsplit=3)
    assert int(got) == item and title == f"Film number {item} (1990)"


def test_cli_recommend_input_file_to_jsonl(trained, loaded, tmp_path):
  requests = tmp_path / "users.txt"
  requests.write_text('1\n\n[4, 5, 6]\n{"user": 7, "id": "x"}\n12\n')
  out = tmp_path / "recs.jsonl"
  assert cli.main(["recommend", str(trained), "--input", str(requests),
                   "--output", str(out), "-k", "4", "--batch-size", "3"]) == 0
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert [x.get("user") for x in lines] == [1, None, 7, 12]
  assert lines[2]["id"] == "x" and lines[1]["history"] == [4, 5, 6]
  for line in lines:
    want = loaded.recommend(user=line.get("user"),
                            history=line.get("history"), k=4)
    assert line["items"] == want["items"]
    assert line["titles"] == [f"Film number {i} (1990)" for i in want["items"]]


def test_cli_recommend_experiment_grid_point_and_errors(store, capsys):
  db, workdir = store
  with pytest.MonkeyPatch.context() as mp:
    exp = experiment_lib.Experiment(
        load_lib.load_run(next((workdir / EXPERIMENT).iterdir())).config,
        axes=(experiment_lib.Axis("tasks", None, {"next_item": {}}),),
        seeds=(0,), name=EXPERIMENT)
    mp.setitem(EXPERIMENTS._items, EXPERIMENT, lambda: exp)
    assert cli.main(["recommend", EXPERIMENT, "--where", "tasks=next_item",
                     "--store", str(db), "--history", "3,4", "-k", "2"]) == 0
    assert "top 2 unseen items for the history" in capsys.readouterr().out
    assert cli.main(["recommend", EXPERIMENT, "--where", "tasks=nope",
                     "--store", str(db), "--user", "1"]) == 2
    assert "has no value 'nope'" in capsys.readouterr().err
  assert cli.main(["recommend", str(workdir), "--user", "1"]) == 2
  assert "holds no config.json" in capsys.readouterr().err
  assert cli.main(["recommend", str(workdir), "--user", "1", "--history",
                   "2"]) == 2
  assert "give one of --user" in capsys.readouterr().err


# --------------------------------------------------------------- export
READER = r"""
import json, sys
sys.modules["mtrec_jax"] = None  # importing it now fails: not needed
import jax, numpy as np
from safetensors.numpy import load_file
folder, *files = sys.argv[1:]  # then (inputs.npz, outputs.npz) pairs
manifest = json.load(open(f"{folder}/manifest.json"))
exported = jax.export.deserialize(
    bytearray(open(f"{folder}/{manifest['function']}", "rb").read()))
params = load_file(f"{folder}/{manifest['params']}")
for inputs, out in zip(files[::2], files[1::2]):
  batch = dict(np.load(inputs))
  for name, spec in manifest["inputs"].items():
    assert str(batch[name].dtype) == spec["dtype"], name
  preds = exported.call(params, batch)
  assert sorted(preds) == sorted(manifest["outputs"])
  np.savez(out, **{k: np.asarray(v) for k, v in preds.items()})
print(json.dumps(sorted(m for m, v in sys.modules.items()
                        if m.startswith("mtrec") and v is not None)))
"""


def test_export_round_trips_exactly_in_a_fresh_process(trained, loaded,
                                                       tmp_path, capsys):
  folder = tmp_path / "served"
  assert cli.main(["export-model", str(trained), "--out", str(folder)]) == 0
  assert "model.stablehlo" in capsys.readouterr().out
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["inputs"] == {"hist_items": {"dtype": "int32",
                                               "shape": ["b", 5]}}
  assert manifest["outputs"] == {"next_all": {
      "dtype": "float32", "shape": ["b", NUM_ITEMS + 1]}}
  assert manifest["params"] == "params.safetensors"
  test = loaded.dataset.splits["test"]
  (tmp_path / "reader.py").write_text(READER)
  files, batches = [], []
  for rows in (NUM_USERS, 3):  # the batch size is symbolic
    batches.append({"hist_items": test["hist_items"][:rows]})
    np.savez(tmp_path / f"in{rows}.npz", **batches[-1])
    files += [str(tmp_path / f"in{rows}.npz"), str(tmp_path / f"out{rows}.npz")]
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run(
      [sys.executable, str(tmp_path / "reader.py"), str(folder), *files],
      cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.splitlines()[-1]) == []  # no mtrec_jax
  for batch, out in zip(batches, files[1::2]):
    got = dict(np.load(out))
    want = loaded.predict(batch)
    assert set(got) == set(want)
    for name in want:
      np.testing.assert_array_equal(got[name], want[name])


# ------------------------------------------------- a tabular ranker (MMoE)
def test_tabular_ranker_scores_and_exports(tmp_path):
  """Candidate scoring: quickstart's MMoE on a few synthetic rows."""
  import jax
  from safetensors.numpy import load_file
  from mtrec_jax.serve.export import export_model
  exp = experiment_lib.get_experiment("quickstart")
  (point,) = exp.runs(only={"model": ["mmoe"]})
  config = config_lib.apply_overrides(point.config, {
      "data.n_train": 64, "data.n_val": 32, "data.n_test": 32,
      "train.batch_size": 16, "train.num_steps": 2, "train.eval_every": 2,
      "train.keep_checkpoints": 0, "log.tensorboard": False})
  train_and_evaluate(config, tmp_path / "run", progress=False)
  run = load_lib.load_run(tmp_path / "run")
  test = run.dataset.splits["test"]
  want, _ = make_predict_fn(run.model, run.tasks)(run.params, test)
  got = run.score(test)
  assert set(got) == {t.name for t in run.tasks} == set(want) and len(got) == 2
  for name in want:
    np.testing.assert_array_equal(got[name], np.asarray(want[name]))
  with pytest.raises(ValueError, match="no next-item task.*score"):
    run.recommend(user=1)
  export_model(run, tmp_path / "served")
  exported = jax.export.deserialize(bytearray(
      (tmp_path / "served" / "model.stablehlo").read_bytes()))
  params = load_file(str(tmp_path / "served" / "params.safetensors"))
  batch = run.model_inputs(test)
  again = exported.call(params, {k: v[:7] for k, v in batch.items()})
  for name in want:
    np.testing.assert_array_equal(np.asarray(again[name]),
                                  run.predict({k: v[:7] for k, v in
                                               batch.items()})[name])
