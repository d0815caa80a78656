"""MovieLens-100K rating prediction: the biased-MF baseline, same harness.

    export MTREC_DATA_DIR=../shared/data
    mtrec run ml100k-rating-mf          # 3 seeds

Biased matrix factorisation (Koren, Bell & Volinsky 2009; the `biased_mf`
connection: mu + b_u + b_i + p_u . q_i with 31 factors plus a bias per user
and item) on the leave-last-out split of `ml100k-mtl`: trained on every
training interaction, selected on validation RMSE, scored on each user's last
rating.  It reads only the user and candidate-item ids, through the same
pipeline, optimizer and metrics as the Transformer models, so its test RMSE
sits next to the `rating` task of `ml100k-mtl`.  AdamW 3e-3 with weight
decay 0.3 were chosen on validation RMSE (seed 0) among decay {0.05, 0.3,
1, 3} and learning rate {1e-3, 3e-3, 1e-2} (a search run by hand; its
numbers are not kept in the store or the paper).  The decay also reaches
mu, the tower's bias, so large values hurt.

Results: paper/paper.md, section 6.4 (table ``ml100k-rating-mf``, generated
by `mtrec paper` from ``paper/results/ml100k-rating-mf.jsonl``), next to the
rating task of the multi-task Transformer (table ``ml100k-rating``).
"""
from experiments.ml100k_mtl import prefix_config
from mtrec_jax.experiment import Experiment
from mtrec_jax.registry import EXPERIMENTS


@EXPERIMENTS.register("ml100k-rating-mf")
def get_experiment() -> Experiment:
  """Biased MF on ML-100K ratings (leave-last-out), 3 seeds."""
  c = prefix_config()
  c.tasks = ("rating",)
  c.model.name = "biased_mf"
  c.model.features = ("user", "cand_item")
  c.model.task_inputs = {}
  c.model.tower_hidden = ()
  c.model.dropout = 0.0
  c.optimizer.learning_rate = 3e-3
  c.optimizer.weight_decay = 0.3
  c.train.num_steps = 3000
  c.train.eval_every = 300
  c.train.selection_metric = "val/rating/rmse"
  return Experiment(c, axes=(), seeds=(0, 1, 2),
                    table_metrics=("test/rating/rmse", "test/rating/mae"))
