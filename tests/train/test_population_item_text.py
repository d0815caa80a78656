"""Population training with item text (issue 18): two seeds of a tiny
fine-tuned (and a frozen) ml100k-text run train as one population and end
as their solo runs, with the text model's identity in each result."""
from __future__ import annotations

import pytest

from mtrec_jax import experiment as experiment_lib
from mtrec_jax.models.text import model_identity
from mtrec_jax.train import population
from tests.models import test_models_all_positions as all_positions
from tests.models.test_item_text import tiny_bert_dir, tiny_run_config  # noqa: F401  (a fixture)
from tests.models.test_models_all_positions import random_movielens
from tests.train.test_population import assert_same_runs, sweep_of

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode, strategy_mode", [("frozen", "params"),
                                                 ("finetune", "params")])
def test_population_with_item_text_equals_solo_runs(
    tmp_path, tiny_bert_dir, monkeypatch, mode, strategy_mode):  # noqa: F811
  monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(all_positions, "NUM_ITEMS", 130)
  folder = tmp_path / "ml-100k"
  random_movielens(folder)
  cfg = tiny_run_config(folder, tmp_path / "tfds", "id+text", mode,
                        tiny_bert_dir, strategy_mode)
  cfg.train.num_steps, cfg.train.eval_every = 4, 2
  exp = experiment_lib.Experiment(cfg, seeds=(0, 1), name="poptext")
  solo, _ = sweep_of(exp, tmp_path, "solo")
  pop, _ = sweep_of(exp, tmp_path, "pop", population.PopulationTrainer(2))
  assert_same_runs(solo, pop)
  for r in pop.results:
    assert r["population"]["size"] == 2
    assert r["data"]["text_model"] == model_identity(tiny_bert_dir)
