"""The blocks `mtrec paper` generates in paper.md (mtrec_jax/results/paper.py).

To add a block: append a Table or Figure here, and put its two marker lines
in paper.md where it should appear:

    <!-- mtrec:table census-mtl-auc -->
    <!-- mtrec:end -->

then `mtrec run census-mtl` (if its runs are not stored yet) and
`mtrec paper --export`, which writes paper/results/census-mtl.jsonl from the
store and regenerates paper.md and paper/figures/. Commit all three.

Table(id, experiment, metrics=(), rows=None, baseline="auto", where=None,
      digits=4, caption="", cost=False, partial=False)
  baseline: 'auto', None, {axis: value}, or a tuple of up to three such
  dicts (one Δm% column and t-test mark †, ‡, § each, over the columns that
  baseline row has). cost: a s/step column, what the runs measured.
Figure(id, experiment, kind, options={}, caption="", partial=False)
  kinds (mtrec_jax/results/figures.py): weights, cosines, validation,
  pareto, metric-vs-axis; options are the keyword arguments of each.
partial=True (every block of the experiment): the grid may be incomplete
  (mtrec_jax/results/partial.py). Without results/<experiment>.jsonl the
  region says "no results yet"; otherwise it states "N of M runs done" (M:
  the registered grid) and leaves out rows with no done run, naming them.
  `mtrec paper --export NAME` exports one experiment (`--export` alone:
  all; a partial one with no stored run is skipped).
BenchTable(id, file, columns, where=None, sort=(), pivot=None, digits=2,
           caption="", folder="benchmarks/results")
  the rows of benchmarks/results/<file>.json (or, with
  folder="references/results", of a reference implementation's results) (what `python -m
  benchmarks.NAME --json benchmarks/results/<file>.json` writes), read from
  the repository holding this folder whatever --from says; its region is
  marked <!-- mtrec:table ID --> like any table. columns: each 'key',
  (key, label) or (key, label, format), format a Python format spec such as
  ',.0f' or '.1%' (floats without one get `digits` decimals). where: {key:
  value or [values]}. sort: keys (default: the file's order). pivot:
  (across, value[, format]), one column per value of `across` holding
  `value`. After rerunning a benchmark, `mtrec paper` regenerates its table
  and `mtrec paper --check` fails until then; no export step is needed.
"""
from mtrec_jax.results.paper import BenchTable, Figure, Table

# The two `benchmarks.peers` tables (MMoE and MLP) show the same columns.
# The public SASRec's comparison tables (test and validation) show these.
SASREC_COLUMNS = ("implementation", "runs", "ndcg@10", "hr@10", "s_ndcg@10",
                  "s_hr@10")
PEERS_COLUMNS = ("strategy", ("jax_mode", "mode"), ("jax_ms", "JAX ms"),
                 ("torch_ms", "PyTorch ms"), ("ratio", "PyTorch / JAX"))

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
    Table("ml100k-mtl-next-item", "ml100k-mtl",
          metrics=("test/next_all/ndcg@10", "test/next_all/hr@10",
                   "test/next_all/mrr", "test/next_all/s_ndcg@10",
                   "test/next_all/s_hr@10"),
          baseline={"tasks": "next_item"},
          caption="MovieLens-100K: next-item test metrics of the causal "
                  "Transformer trained on all positions for next item "
                  "alone, with the rating, like and genre of the next "
                  "interaction (all), and with the contrastive and "
                  "knowledge-graph tasks (ssl); equal weights."),
    Table("ml100k-popularity", "ml100k-mtl",
          metrics=tuple(f"report/popularity/test/next_item/{m}"
                        for m in ("ndcg@10", "hr@10", "mrr", "s_ndcg@10",
                                  "s_hr@10")),
          where={"tasks": "next_item"}, baseline=None,
          caption="The popularity baseline (items ranked by training "
                  "interactions) on the same test targets and protocols."),
    Table("ml100k-rating", "ml100k-mtl",
          metrics=("test/rating_all/rmse", "test/rating_all/mae",
                   "test/like_all/auc"),
          where={"tasks": "all"}, baseline=None,
          caption="MovieLens-100K: rating and like on each user's last "
                  "interaction, from the multi-task Transformer."),
    Table("ml100k-rating-mf", "ml100k-rating-mf", baseline=None,
          caption="Biased matrix factorisation on the same ratings, same "
                  "harness."),
    Table("ml100k-finetune", "ml100k-finetune",
          baseline={"init": "scratch"},
          caption="MovieLens-100K: the next-item Transformer trained from "
                  "scratch or initialised from the self-supervised "
                  "pre-training of ml100k-pretrain."),
    Table("ml100k-sasrec", "ml100k-sasrec", baseline={"loss": "bce"},
          caption="MovieLens-100K: next-item test metrics of SASRec's "
                  "architecture with its original loss (bce), the full "
                  "softmax (the next_item model of ml100k-mtl) and the "
                  "sampled softmax (100 negatives)."),
    # The public SASRec against ours on our split: rows that
    # references/sasrec_summary.py writes from the reference's runs
    # (references/sasrec_pytorch.py) and our exported runs.
    BenchTable("sasrec-reference", "sasrec_reference",
               folder="references/results", where={"table": "quality"},
               columns=SASREC_COLUMNS,
               caption="MovieLens-100K, our split: test next-item metrics "
                       "of the public SASRec (pmixer/SASRec.pytorch, "
                       "unmodified, its own settings), of the same "
                       "computation in this harness (ml100k-sasrec-ref), "
                       "and of ml100k-mtl's models at its settings "
                       "(ml100k-mtl-ref); every checkpoint scored by our "
                       "metric code. Mean ± sample std over runs; †: "
                       "Welch's two-sided t-test against the reference's "
                       "runs, p < 0.05."),
    BenchTable("sasrec-reference-val", "sasrec_reference",
               folder="references/results", where={"table": "validation"},
               columns=SASREC_COLUMNS,
               caption="The same checkpoints on validation, the split that "
                       "selected them (each implementation's rule: ours, "
                       "validation sampled NDCG@10 every 160 steps; the "
                       "reference's, its own sampled NDCG@10 every 20 "
                       "epochs). †: Welch's two-sided t-test against the "
                       "reference's runs, p < 0.05."),
    BenchTable("sasrec-reference-epoch", "sasrec_reference",
               folder="references/results", where={"table": "epoch_time"},
               columns=("implementation",
                        ("load", "load (1 min)", ".1f"),
                        ("wall_s_per_epoch", "wall s/epoch", ".2f"),
                        ("cpu_s_per_epoch", "CPU s/epoch", ".2f"),
                        "epochs"),
               caption="Seconds per training epoch (8 steps of batch 128, "
                       "length 200) at the reference's settings, median "
                       "over the epochs timed after a warm-up one, measured "
                       "back to back on the same cores in the order "
                       "listed; load: the 1-minute load average when each "
                       "measurement started. CPU: the process's CPU time "
                       "over its threads (the reference's 3 sampler "
                       "processes are not counted)."),
    Table("ml100k-sasrec-ref", "ml100k-sasrec-ref", baseline=None,
          caption="MovieLens-100K: ml100k-sasrec-ref, the reference "
                  "SASRec's computation in this harness, all metrics."),
    Table("ml100k-mtl-ref", "ml100k-mtl-ref",
          baseline={"tasks": "next_item"}, partial=True,
          caption="MovieLens-100K at the public SASRec's settings (length "
                  "200, 50 units, dropout 0.2, 1,600 steps), full softmax: "
                  "next item alone and with the rating, like and genre "
                  "tasks (equal weights)."),
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
    # annotate: 30 strategies would need a legend larger than the axes.
    Figure("census-strategies-pareto", "census-strategies", "pareto",
           options={"annotate": True},
           caption="Census-Income, MMoE: income AUC against never-married "
                   "AUC, one point per strategy (mean ± std over seeds)."),
    # A grid still running (several sessions): partial=True renders what
    # is done, says how much, and "no results yet" without a results file.
    Table("ml100k-strategies-metrics", "ml100k-strategies",
          baseline=({"strategy": "mean"}, {"strategy": "single_task"}),
          cost=True, partial=True,
          caption="MovieLens-100K, the all-positions Transformer on next "
                  "item + rating + like + genre: test metrics per weighting "
                  "strategy, and next item alone (single_task). Δm% vs "
                  "mean: over all five columns against equal weights; Δm% "
                  "vs single_task: over the three next-item columns, "
                  "against the model trained for next item alone. s/step: "
                  "as the runs measured it on the machine that ran them, "
                  "under its load at the time (not a benchmark: section "
                  "7.4's second table has one); the seeds of a strategy that trained as "
                  "one population share one program and its time."),
    Figure("ml100k-strategies-pareto", "ml100k-strategies", "pareto",
           options={"x": "test/next_all/ndcg@10",
                    "y": "test/rating_all/rmse",
                    "highlight": ("mean", "single_task"), "annotate": True,
                    "ylim": (1.05, 1.25)},
           partial=True,
           caption="MovieLens-100K: next-item NDCG@10 against rating RMSE "
                   "(lower is better), one point per strategy (mean ± std "
                   "over seeds), the Pareto front dashed; equal weights "
                   "(mean) highlighted, and next item alone (single_task, "
                   "which predicts no rating) as a vertical line with its "
                   "± std band. The RMSE axis stops at 1.25: a strategy "
                   "beyond it is a triangle at the edge, named with its "
                   "RMSE."),
    BenchTable("perf-throughput", "throughput_cpu",
               columns=("model", "strategy", "mode", "engine",
                        ("step_ms", "step ms"),
                        ("examples_per_s", "examples/s", ",.0f"),
                        ("compile_ms", "compile ms", ",.0f")),
               caption="Train step per model and strategy: median step "
                       "time, examples per second and jit compile time."),
    BenchTable("perf-roofline", "roofline_cpu",
               columns=("model", ("batch_size", "batch"),
                        ("step_ms", "step ms"),
                        ("gflops", "GFLOP/s", ".1f"),
                        ("peak_gflops", "peak GFLOP/s", ".1f"),
                        ("fraction", "of peak", ".1%")),
               caption="Achieved FLOP rate of the train step (equal "
                       "weights) against the best measured float32 matmul "
                       "rate."),
    BenchTable("perf-peers-mmoe", "peers_cpu_mmoe",
               columns=PEERS_COLUMNS,
               caption="Census-sized MMoE (K = 2): JAX against a "
                       "LibMTL-style PyTorch step in the same gradient "
                       "mode, median step time."),
    BenchTable("perf-peers", "peers_cpu",
               columns=PEERS_COLUMNS,
               caption="Dense shared-bottom MLP (2 x 512 units, K = 4): "
                       "JAX against a LibMTL-style PyTorch step in the same "
                       "gradient mode, median step time."),
    BenchTable("perf-strategies-k4", "strategies_cpu_k4",
               columns=("strategy",), where={"k": 4},
               pivot=("mode", "step_ms", ".2f"),
               caption="Median train-step time in ms of every weighting "
                       "strategy with K = 4 tasks, one column per gradient "
                       "mode; – : the strategy has no such mode."),
    Table("gradnorm-toy", "gradnorm-toy",
          metrics=("val/loss_ratio_sum", "test/loss"),
          baseline={"strategy": "equal"},
          caption="GradNorm's toy (Chen et al. 2018, section 4): sum of "
                  "relative validation losses L_i(t) / L_i(0) at the end, "
                  "and the mean test MSE, equal weights against GradNorm "
                  "(alpha 0.12)."),
    Figure("gradnorm-toy-weights", "gradnorm-toy", "weights",
           options={"where": {"strategy": "gradnorm"}},
           caption="GradNorm's task weights over training on the toy "
                   "(10 tasks, scales 1 to 100), mean over seeds."),
    Table("uncertainty-toy", "uncertainty-toy",
          metrics=tuple(f"report/task{k}/abs_ratio_error"
                        for k in range(3)) + ("report/max_abs_ratio_error",),
          baseline=None,
          directions={f"report/{k}abs_ratio_error": "min"
                      for k in ("task0/", "task1/", "task2/", "max_")},
          caption="Uncertainty weighting (Kendall et al. 2018): |learned "
                  "sigma^2 / true noise variance - 1| for the heads of "
                  "noise variance 0.25, 1 and 4, and the largest of the "
                  "three (the claim: below 0.2)."),
    # Issue 18: item text from all-MiniLM-L6-v2 (experiments/ml100k_text.py).
    Table("ml100k-text-all", "ml100k-text",
          metrics=("test/next_all/ndcg@10", "test/next_all/hr@10",
                   "test/next_all/s_ndcg@10", "test/next_all/s_hr@10",
                   "test/rating_all/rmse"),
          baseline=({"item": "ids"}, {"item": "frozen"}), partial=True,
          caption="MovieLens-100K, next item + rating + like + genre "
                  "(equal weights): every test user, by item "
                  "representation: learned ids, ids + frozen title "
                  "embeddings (all-MiniLM-L6-v2), ids + the fine-tuned "
                  "encoder."),
    Table("ml100k-text-cold", "ml100k-text",
          metrics=tuple(f"report/cold/test/next_all/{m}" for m in (
              "ndcg@10", "hr@10", "s_ndcg@10", "s_hr@10")),
          baseline=({"item": "ids"}, {"item": "frozen"}), partial=True,
          caption="The same runs on the cold-item slice: the test users "
                  "whose target item has fewer than 5 interactions in the "
                  "training histories."),
    Table("ml100k-text-best", "ml100k-text-best",
          metrics=("test/next_all/ndcg@10", "test/next_all/hr@10",
                   "test/next_all/s_ndcg@10",
                   "report/cold/test/next_all/ndcg@10",
                   "report/cold/test/next_all/hr@10",
                   "report/cold/test/next_all/s_hr@10"),
          baseline={"item": "ids"}, partial=True,
          caption="The ids and frozen rows trained under the best "
                  "strategy of section 6.5b (experiments/ml100k_text.py, "
                  "BEST_STRATEGY) instead of equal weights: every test "
                  "user, then the cold-item slice."),
    Table("ml100k-text-coldstart", "ml100k-text-coldstart",
          metrics=("report/coldstart/test/next_all/ndcg@10",
                   "report/coldstart/test/next_all/hr@10",
                   "report/coldstart/test/next_all/s_ndcg@10",
                   "test/next_all/ndcg@10", "test/next_all/hr@10"),
          baseline=({"item": "ids"}, {"item": "frozen"}), partial=True,
          caption="Cold-start split: 20% of the test-target items held out "
                  "of training entirely; next-item metrics on the test "
                  "users whose target is held out (coldstart/), and on "
                  "every test user."),
    BenchTable("ml100k-strategies-cost", "strategies_ml100k_cpu",
               columns=(("strategy", "row"), "mode",
                        ("step_ms", "step ms", ".0f"),
                        ("relative", "× mean"),
                        ("gflop", "GFLOP/step", ".2f")),
               caption="Train-step time of every row of the grid on its own "
                       "model and batch (benchmarks/strategies_ml100k.py: "
                       "seed 0's config, each strategy in its grid mode, "
                       "median of interleaved rounds on this CPU, one "
                       "program per row, no population). GFLOP/step: XLA's "
                       "count of one step."),
    BenchTable("text-step-cost", "text_encoder_steps_cpu",
               columns=(("name", "item representation"),
                        ("ms", "step ms", ".0f"), ("relative", "× ids"),
                        ("gflop", "GFLOP/step", ".1f"),
                        ("shared_params", "shared params", ",.0f")),
               caption="Training-step time by item representation "
                       "(benchmarks/text_encoder.py: median of interleaved "
                       "rounds on this CPU). finetuneN: the lower N of the "
                       "encoder's 6 layers frozen (their output computed "
                       "once a run), the trainable ones run over all 1,682 "
                       "titles every step, each title at its own length; "
                       "`ml100k-text` fine-tunes with N = 5."),
]
