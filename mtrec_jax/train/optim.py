"""The optax optimizer a config asks for."""
from __future__ import annotations

import optax

from mtrec_jax.registry import unknown_name_message

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
  lr = cfg.learning_rate
  if cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  if cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(num_steps, 1))
  if cfg.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, cfg.warmup_steps, max(num_steps, cfg.warmup_steps + 1))
  raise ValueError(unknown_name_message("schedule", cfg.schedule, SCHEDULES))


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
  """`cfg` is the config's `optimizer` section."""
  lr = learning_rate_schedule(cfg, num_steps)
  if cfg.name == "adam":
    opt = optax.adam(lr)
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=cfg.momentum or None)
  else:
    raise ValueError(unknown_name_message("optimizer", cfg.name, OPTIMIZERS))
  if cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
