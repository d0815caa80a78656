"""Uncertainty weighting recovers known task noise levels.

    mtrec run uncertainty-toy

Kendall, Gal & Cipolla, CVPR 2018: with the Gaussian-likelihood objective
L_k / (2 sigma_k^2) + log sigma_k, the learned variance sigma_k^2 = exp(s_k)
tends to the task's loss, i.e. to its noise variance once the shared function
is fitted. Three regression heads share one function of x and differ only in
their noise std (0.5, 1, 2; true variances 0.25, 1, 4), 50k training rows
(fewer let the network fit some of the noise, which biases sigma^2 low). The result's
`report` holds, per task, the learned sigma^2, the true variance and their
ratio; the claim is every ratio within 20% of 1.
"""
import math

from mtrec_jax.config import base_config
from mtrec_jax.experiment import Axis, Experiment
from mtrec_jax.registry import EXPERIMENTS


def learned_vs_true_variance(result: dict, dataset) -> dict:
  """sigma_k^2 = exp(s_k) from the final strategy state vs the data's truth."""
  log_var = (result.get("strategy_state") or {}).get("log_var")
  if log_var is None:
    return {}
  true = dataset.info["noise_variances"]
  out = {}
  for k, (s, v) in enumerate(zip(log_var, true)):
    out[f"task{k}/learned_variance"] = math.exp(s)
    out[f"task{k}/true_variance"] = float(v)
    out[f"task{k}/ratio"] = math.exp(s) / float(v)
    out[f"task{k}/abs_ratio_error"] = abs(out[f"task{k}/ratio"] - 1)
  out["max_abs_ratio_error"] = max(out[f"task{k}/abs_ratio_error"]
                                   for k in range(len(true)))
  return out


@EXPERIMENTS.register("uncertainty-toy")
def get_experiment() -> Experiment:
  """Uncertainty weighting learns each head's noise variance (3 seeds)."""
  c = base_config()
  c.data.name = "uncertainty_toy"
  c.data.noise_stds = (0.5, 1.0, 2.0)
  c.data.n_train = 50000
  c.model.name = "shared_bottom"
  c.model.bottom_hidden = (64, 64)
  c.model.tower_hidden = (16,)
  c.strategy.name = "uncertainty"
  c.strategy.hparams.lr = 0.01
  c.optimizer.learning_rate = 3e-3
  c.train.batch_size = 128
  c.train.num_steps = 3000
  c.train.eval_every = 500
  return Experiment(c, axes=(Axis("strategy", "strategy.name",
                                  ("uncertainty",)),),
                    seeds=(0, 1, 2), report=learned_vs_true_variance,
                    table_metrics=("test/task0/mse", "test/task1/mse",
                                   "test/task2/mse"))
