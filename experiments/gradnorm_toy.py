"""GradNorm's toy problem: regression tasks with very different scales.

    mtrec run gradnorm-toy

Chen et al., ICML 2018, section 4 ("toy example"): T = 10 regression tasks
f_i(x) = sigma_i tanh((B + eps_i) x) with sigma_i spread from 1 to 100, a
4-layer, 100-unit shared ReLU trunk with one linear head per task, trained
with equal weights (`sum`, every weight 1) or GradNorm (weights renormalised
to sum to T; alpha = 0.12 as in the paper's toy). The paper's figure shows
GradNorm's weights moving to balance the tasks' training rates and the sum
of relative validation losses sum_i L_i(t) / L_i(0) (`val/loss_ratio_sum`)
ending lower than with equal weights.
"""
from mtrec_jax.config import base_config
from mtrec_jax.experiment import Axis, Experiment
from mtrec_jax.registry import EXPERIMENTS


@EXPERIMENTS.register("gradnorm-toy")
def get_experiment() -> Experiment:
  """GradNorm vs equal weights on 10 toy tasks of very different scales."""
  c = base_config()
  c.data.name = "gradnorm_toy"
  c.data.num_tasks = 10
  c.data.n_train = 5000
  c.model.name = "shared_bottom"
  c.model.bottom_hidden = (100, 100, 100, 100)
  c.model.tower_hidden = ()
  c.optimizer.learning_rate = 1e-3
  c.train.batch_size = 100
  c.train.num_steps = 3000
  c.train.eval_every = 250
  c.train.eval_batch_size = 1000
  strategies = Axis("strategy", None, {
      "equal": {"strategy.name": "sum"},
      "gradnorm": {"strategy.name": "gradnorm",
                   "strategy.hparams.alpha": 0.12},
  })
  return Experiment(c, axes=(strategies,), seeds=(0, 1, 2),
                    table_metrics=("val/loss_ratio_sum", "test/loss"))
