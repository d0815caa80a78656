"""Value checks of a resolved config, run when a grid is expanded.

`config.apply_overrides` already keeps every key's type, so a string where a
number belongs fails there; this module catches numbers of the right type
but an impossible value (a negative learning rate, ``num_steps = 0``,
``eval_every = 0``), which would otherwise finish a run as "done" with
nothing trained, or fail after compiling with a bare ZeroDivisionError.
Each error names the key, the value and the fix.  Model- and strategy-
specific keys are checked where they are built (models/build.py,
weighting/).
"""
from __future__ import annotations

import math
from typing import Any

# key -> (lowest allowed value, whether it must be strictly above it, why).
_BOUNDS: dict[str, tuple[float, bool, str]] = {
    "optimizer.learning_rate": (0.0, True, "the step size of every update"),
    "optimizer.warmup_steps": (0, False, "0 = no warm-up"),
    "optimizer.weight_decay": (0.0, False, "0 = none"),
    "optimizer.momentum": (0.0, False, "0 = none"),
    "optimizer.grad_clip_norm": (0.0, False, "0 = no clipping"),
    "optimizer.text_lr_scale": (0.0, False, "0 = the fine-tuned text "
                                "encoder does not learn"),
    "train.num_steps": (1, False, "training steps of the run"),
    "train.batch_size": (1, False, "rows per training step"),
    "train.eval_batch_size": (1, False, "rows per evaluation batch"),
    "train.eval_every": (1, False, "evaluate every N steps; to evaluate only "
                         "at the end, set it to train.num_steps"),
    "train.log_every": (1, False, "log every N steps; to log only at the "
                        "end, set it to train.num_steps"),
    "train.patience": (0, False, "0 = never stop early"),
    "train.checkpoint_every": (0, False, "0 = at each evaluation"),
    "train.checkpoint_minutes": (0.0, False, "0 = no timed checkpoints"),
    "train.keep_checkpoints": (0, False, "0 = no checkpoints"),
    "train.mesh_data": (0, False, "0 = all devices / mesh_model"),
    "train.mesh_model": (1, False, "devices of the 'model' mesh axis"),
}


def _get(config: Any, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False, None
  return True, node


def check_values(config: Any, where: str = "") -> None:
  """Raises ValueError naming the first key whose value cannot work.

  `config`: a ConfigDict or its plain-dict form; keys it lacks are not
  checked.  `where`: prefixed to the message (e.g. the run's name).
  """
  prefix = f"{where}: " if where else ""
  for key, (low, strict, why) in _BOUNDS.items():
    present, value = _get(config, key)
    if not present or value is None or isinstance(value, bool):
      continue
    try:
      v = float(value)
    except (TypeError, ValueError):
      continue  # the type check of apply_overrides names it
    bad = (not math.isfinite(v)) or (v <= low if strict else v < low)
    if bad:
      bound = f"> {low:g}" if strict else f">= {low:g}"
      raise ValueError(f"{prefix}config key {key} = {value!r} is not allowed: "
                       f"it must be {bound} ({why}); fix it with --set "
                       f"{key}=... or in the experiment file")
