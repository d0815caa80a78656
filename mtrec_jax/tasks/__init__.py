"""Tasks: specs (head, label, loss, predictions) and exact metrics.

The names below load on first use (PEP 562), so importing one light module
of the package (`tasks.metrics`, numpy only, as the experiment files do) does
not import jax and optax through `tasks.spec`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_METRICS": "metrics", "METRICS": "metrics",
    "compute_all_metrics": "metrics", "compute_metrics": "metrics",
    "direction": "metrics", "get_metric": "metrics",
    "metrics_for_head": "metrics", "register_metric": "metrics",
    "HEADS": "spec", "TaskSpec": "spec", "task_from_config": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
