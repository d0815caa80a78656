"""The blocks `mtrec paper` generates in paper.md (mtrec_jax/results/paper.py).

To add a block: append a Table or Figure here, and put its two marker lines
in paper.md where it should appear:

    <!-- mtrec:table census-mtl-auc -->
    <!-- mtrec:end -->

then `mtrec run census-mtl` (if its runs are not stored yet) and
`mtrec paper --export`, which writes paper/results/census-mtl.jsonl from the
store and regenerates paper.md and paper/figures/. Commit all three.

Table(id, experiment, metrics=(), rows=None, baseline="auto", where=None,
      digits=4, caption="")
Figure(id, experiment, kind, options={}, caption="")
  kinds (mtrec_jax/results/figures.py): weights, cosines, validation,
  pareto, metric-vs-axis; options are the keyword arguments of each.
"""
from mtrec_jax.results.paper import Figure, Table

BLOCKS = [
    Table("quickstart-mse", "quickstart",
          baseline={"model": "shared_bottom"},
          caption="Quickstart: test MSE per task, shared-bottom vs MMoE."),
    Figure("quickstart-validation", "quickstart", "validation",
           caption="Quickstart: validation MSE per task over training."),
    Figure("quickstart-pareto", "quickstart", "pareto",
           caption="Quickstart: test MSE of task 1 against task 2, one "
                   "point per model."),
    Table("census-mtl-auc", "census-mtl",
          baseline={"model": "single_task"},
          caption="Census-Income: test AUC per task and architecture "
                  "(equal weights)."),
    Table("ml100k-sasrec", "ml100k-sasrec", baseline=None,
          caption="MovieLens-100K: SASRec's next-item test metrics with its "
                  "original loss and with the full softmax."),
    Table("mmoe-synthetic-loss", "mmoe-synthetic",
          metrics=("test/loss", "report/mean_train_loss"), baseline=None,
          caption="MMoE synthetic benchmark: mean test loss and mean "
                  "training loss by model and task correlation."),
    Figure("mmoe-synthetic-correlation", "mmoe-synthetic", "metric-vs-axis",
           options={"x": "correlation", "lines": "model",
                    "metric": "report/mean_train_loss"},
           caption="Mean training loss against task correlation, one line "
                   "per model (mean ± std over seeds); compare Ma et al. "
                   "2018, Figure 4."),
    Table("census-strategies-auc", "census-strategies",
          baseline={"strategy": "mean"},
          caption="Census-Income, MMoE: test AUC per weighting strategy."),
    Figure("census-strategies-pareto", "census-strategies", "pareto",
           caption="Census-Income, MMoE: income AUC against never-married "
                   "AUC, one point per strategy (mean ± std over seeds)."),
]
