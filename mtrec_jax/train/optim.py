"""The optax optimizer a config asks for.

`make_optimizer(cfg, num_steps)` is one optax optimizer over all parameters.
With ``groups`` (the task names), the optimizer keeps one state per
parameter group instead, for training schedules that freeze groups (the
`alternating` strategy): ``"connection"`` (the cross-task connection module,
``params['shared']['connection']``), ``"task/<name>"`` (the tower
``params['towers'][name]`` or auxiliary head ``params['aux'][name]`` of each
task named) and ``"rest"`` (everything else).  Each group has its own
gradient statistics (Adam's moments *and step count*, SGD's momentum) through
``optax.multi_transform``, so a group that is frozen for a while, and whose
state the train step then keeps unchanged (`step.freeze_groups`), resumes
exactly where it stopped, as a ``torch.optim.Adam`` parameter that gets no
gradient (it is skipped: no moment decay, no step count) -- with one shared
count, the bias correction of a group that was frozen used the other group's
step count (the connection's first Adam step after 3 frozen steps was 0.58 lr
instead of lr).  The gradient clip and the learning-rate schedule stay global
(the schedule follows the run's step, not a group's count).

``optimizer.text_lr_scale`` (issue 18, default 1.0 = off): the updates of a
fine-tuned text encoder (every parameter under a ``bert`` key, see
`models.item_text`) are multiplied by it through ``optax.multi_transform``,
after the optimizer, i.e. their learning rate is ``learning_rate *
text_lr_scale`` (exactly, for the optimizers here, whose update is linear in
the learning rate: adam, adamw with its decoupled decay, sgd, lion, ...);
their moments are the optimizer's own.  At 1.0 nothing is added, so the
optimizer state of every other run is unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import inspect

import jax
import optax
from optax._src import alias as _optax_alias

from mtrec_jax.registry import Registry, unknown_name_message

# optax's optimizers by optax's own names (optax.adam, optax.lion, ...): every
# function of optax's alias module whose first argument is the learning rate.
OPTIMIZERS: Registry = Registry("optimizer")
for _name, _fn in sorted(vars(_optax_alias).items()):
  if (not _name.startswith("_") and callable(_fn)
      and not isinstance(_fn, type) and getattr(optax, _name, None) is _fn
      and next(iter(inspect.signature(_fn).parameters), "") == "learning_rate"):
    OPTIMIZERS.register(_name)(_fn)


# Adam's moment decay rates (`optimizer.b1`, `optimizer.b2`), optax's (and
# PyTorch's) defaults; passed to the optimizers of ADAM_BETAS only.
ADAM_B1, ADAM_B2 = 0.9, 0.999
ADAM_BETAS = ("adam", "adamw")


def adam_betas(cfg) -> dict:
  """{'b1', 'b2'} of `cfg` for adam/adamw, checked; {} for any other
  optimizer, which must leave them at the defaults (its own optax defaults
  apply: lion's b2 is 0.99, for one)."""
  b1 = float(cfg.get("b1", ADAM_B1))
  b2 = float(cfg.get("b2", ADAM_B2))
  for name, b in (("b1", b1), ("b2", b2)):
    if not 0.0 <= b < 1.0:
      raise ValueError(f"optimizer.{name} must be in [0, 1) (a moment decay "
                       f"rate), got {b}")
  if cfg.name in ADAM_BETAS:
    return {"b1": b1, "b2": b2}
  if (b1, b2) != (ADAM_B1, ADAM_B2):
    raise ValueError(f"optimizer.b1/b2 ({b1}, {b2}) are Adam's decay rates, "
                     f"passed to {' and '.join(ADAM_BETAS)} only; optimizer "
                     f"{cfg.name!r} keeps optax's defaults, so leave them at "
                     f"({ADAM_B1}, {ADAM_B2})")
  return {}


def optax_optimizer(cfg, learning_rate) -> optax.GradientTransformation:
  """optax's optimizer `cfg.name` with the learning rate (schedule) and, where
  its signature takes them, `cfg.weight_decay` and `cfg.momentum` (0 = None,
  no momentum), and for adam/adamw `cfg.b1`, `cfg.b2` (`adam_betas`); every
  other argument keeps optax's default."""
  fn = OPTIMIZERS.get(cfg.name)  # unknown names list the closest ones
  takes = inspect.signature(fn).parameters
  kwargs = adam_betas(cfg)
  if "weight_decay" in takes:
    kwargs["weight_decay"] = cfg.weight_decay
  if "momentum" in takes:
    kwargs["momentum"] = cfg.momentum or None
  return fn(learning_rate, **kwargs)
SCHEDULES = ("constant", "cosine", "warmup_cosine")
CONNECTION = "connection"
REST = "rest"


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


def key_names(path) -> list:
  """The names along a pytree key path: dict keys and attribute names (flax
  params are nested dicts), None for sequence indices."""
  return [getattr(k, "key", getattr(k, "name", None)) for k in path]


def task_group(name: str) -> str:
  return f"task/{name}"


def group_of(path, tasks: Sequence[str]) -> str:
  """The group of a params leaf (by its key path; see the module docstring)."""
  names = key_names(path)
  if any(a == "shared" and b == CONNECTION for a, b in zip(names, names[1:])):
    return CONNECTION
  if len(names) >= 2 and names[0] in ("towers", "aux") and names[1] in tasks:
    return task_group(names[1])
  return REST


def group_labels(params, tasks: Sequence[str]):
  """The params tree with each leaf replaced by its group's name."""
  tasks = tuple(tasks)
  return jax.tree_util.tree_map_with_path(lambda p, _: group_of(p, tasks),
                                          params)


def group_names(tasks: Sequence[str]) -> tuple[str, ...]:
  return (CONNECTION, REST) + tuple(task_group(t) for t in tasks)


def _statistics(cfg) -> optax.GradientTransformation:
  """The per-parameter part of the optimizer, before the learning rate."""
  if cfg.name in ADAM_BETAS:
    return optax.scale_by_adam(**adam_betas(cfg))  # as optax.adam
  if cfg.name == "sgd":
    return (optax.trace(decay=cfg.momentum) if cfg.momentum
            else optax.identity())
  raise ValueError(unknown_name_message("optimizer", cfg.name, OPTIMIZERS))


TEXT = "text"


def text_labels(params):
  """'text' for leaves under a ``bert`` key of ``shared``, else 'rest'."""
  def label(path, _):
    names = key_names(path)
    return TEXT if names[:1] == ["shared"] and "bert" in names else REST
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg, num_steps: int,
                   groups: Optional[Sequence[str]] = None
                   ) -> optax.GradientTransformation:
  """`cfg` is the config's `optimizer` section; `groups`: None for one state
  over all parameters, or the task names for one state per group."""
  lr = learning_rate_schedule(cfg, num_steps)
  adam_betas(cfg)  # checks b1/b2 whichever the path
  if groups is None:
    opt = optax_optimizer(cfg, lr)
  else:
    # optax.adam / adamw / sgd, with the statistics split by group.
    tasks = tuple(groups)
    parts = [optax.multi_transform(
        {g: _statistics(cfg) for g in group_names(tasks)},
        lambda params: group_labels(params, tasks))]
    if cfg.name == "adamw":
      parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.scale_by_learning_rate(lr))
    opt = optax.chain(*parts)
  scale = float(cfg.get("text_lr_scale", 1.0))
  if scale < 0:
    raise ValueError(f"optimizer.text_lr_scale must be >= 0 (0 = the text "
                     f"encoder does not learn), got {scale}")
  if scale != 1.0:
    opt = optax.chain(opt, optax.multi_transform(
        {TEXT: optax.scale(scale), REST: optax.identity()}, text_labels))
  if cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
