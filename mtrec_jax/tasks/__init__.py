"""Tasks: specs (head, label, loss, predictions) and exact metrics."""
from __future__ import annotations

from mtrec_jax.tasks.metrics import (DEFAULT_METRICS, METRICS,
                                     compute_all_metrics, compute_metrics,
                                     direction, get_metric, metrics_for_head,
                                     register_metric)
from mtrec_jax.tasks.spec import HEADS, TaskSpec, task_from_config

__all__ = ["DEFAULT_METRICS", "HEADS", "METRICS", "TaskSpec",
           "compute_all_metrics", "compute_metrics", "direction", "get_metric",
           "metrics_for_head", "register_metric", "task_from_config"]
