"""Population training with item text (issue 18): two seeds of a tiny
fine-tuned (and a frozen) ml100k-text run train as one population and end
as their solo runs, with the text model's identity in each result."""
from __future__ import annotations

import pytest

from mtrec_jax import experiment as experiment_lib
from mtrec_jax.models.text import model_identity
from mtrec_jax.train import population
from tests.models.test_item_text import tiny_bert_dir, tiny_text_run  # noqa: F401  (a fixture)
from tests.train.test_population import assert_same_runs, sweep_of

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode, strategy_mode", [("frozen", "params"),
                                                 ("finetune", "params")])
def test_population_with_item_text_equals_solo_runs(
    tmp_path, tiny_bert_dir, monkeypatch, mode, strategy_mode):  # noqa: F811
  cfg = tiny_text_run(tmp_path, monkeypatch, tiny_bert_dir, mode,
                      strategy_mode)
  cfg.train.num_steps, cfg.train.eval_every = 4, 2
  exp = experiment_lib.Experiment(cfg, seeds=(0, 1), name="poptext")
  solo, _ = sweep_of(exp, tmp_path, "solo")
  pop, _ = sweep_of(exp, tmp_path, "pop", population.PopulationTrainer(2))
  assert_same_runs(solo, pop)
  for r in pop.results:
    assert r["population"]["size"] == 2
    assert r["data"]["text_model"] == model_identity(tiny_bert_dir)
