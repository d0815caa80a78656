"""Extra training batches per step, for the strategies whose papers ask for
more than the step's own batch.

* Auto-Lambda (`auto_lambda`): one meta batch, keys ``meta:<key>``, from the
  strategy's ``meta_split``.
* MoDo and SDMGrad (`DoubleSampledStrategy`): two more *training* batches,
  keys ``sample1:<key>`` and ``sample2:<key>``.  Their weights are computed
  from the cross Gramian ``J_1 J_2^T`` of those two batches' Jacobians (an
  unbiased estimate of ``E[J] E[J]^T`` when the batches are independent),
  and they weigh the Jacobian of the step's own batch (the papers' third
  sample).

The extra batches travel inside the step's batch dict under those key
prefixes, so they pass the jitted step and its batch sharding unchanged.
The train loop asks `extra_batches` what to feed and draws them from one
second shuffle of the split (`loop.META_SEED_OFFSET`), ``n`` consecutive
batches of that stream per step for ``n`` prefixes: step t gets stream
batches ``n t .. n t + n - 1``, a pure function of (seed, step) as the
training batch is, so a resumed run gets the same ones.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

from mtrec_jax.weighting.auto_lambda import META_PREFIX
from mtrec_jax.weighting.base import Strategy

SAMPLE_PREFIXES = ("sample1:", "sample2:")


@dataclasses.dataclass(frozen=True)
class DoubleSampledStrategy(Strategy):
  """A "gramian" strategy with double sampling (MoDo, SDMGrad).

  In the train step (params mode), ``weigh`` receives as ``gramian`` the
  cross matrix ``G_ij = <J1_i, J2_j>`` of the shared-parameter Jacobians of
  the batches under `sample_prefixes` (not symmetric, diagonal possibly
  negative), and the weights it returns combine the rows of the step's own
  batch.  Everywhere else (``aggregate``, ``as_optax``, rep mode) it is an
  ordinary "gramian" strategy on the one Gramian ``J J^T`` it is given.
  """
  sample_prefixes: tuple = SAMPLE_PREFIXES


def check_flag(strategy: str, name: str, value) -> None:
  """A boolean hyper-parameter must be a bool: the string "false" (e.g.
  ``--set strategy.hparams.x=false``) would silently count as true."""
  if not isinstance(value, bool):
    raise ValueError(f"strategy {strategy!r}: {name} must be True or False, "
                     f"got {value!r} ({type(value).__name__}); on the "
                     f"command line write strategy.hparams.{name}=False")


def double_sampled(strategy: Strategy, mode: str) -> bool:
  """Whether the train step forms the cross Gramian of two extra batches
  for `strategy` in gradient mode `mode` (params mode only: the per-example
  representation rows of two batches share no coordinates)."""
  return (isinstance(strategy, DoubleSampledStrategy)
          and strategy.kind == "gramian" and mode == "params")


def extra_batches(strategy: Strategy, mode: str
                  ) -> tuple[str, tuple[str, ...]]:
  """``(split, key prefixes)`` of the extra batches the train step of
  `strategy` in gradient mode `mode` reads each step; no prefixes (the
  usual case) means none."""
  if getattr(strategy, "meta_update", None) is not None:  # Auto-Lambda
    return strategy.meta_split, (META_PREFIX,)
  if double_sampled(strategy, mode):
    return "train", tuple(strategy.sample_prefixes)
  return "train", ()


def with_extra_batches(batch: dict, extras: Mapping[str, dict]) -> dict:
  """One batch dict carrying each extra batch under ``<prefix><key>``
  (`extras`: prefix -> batch)."""
  prefixes = tuple(extras)
  clash = [k for k in batch if k.startswith(prefixes)]
  if clash:
    raise ValueError(f"batch keys {clash} already start with one of the "
                     f"extra-batch prefixes {prefixes}")
  out = dict(batch)
  for prefix, extra in extras.items():
    out.update({prefix + k: v for k, v in extra.items()})
  return out


def split_extra_batches(batch: dict, prefixes: Sequence[str]
                        ) -> tuple[dict, list[Optional[dict]]]:
  """(the step's own batch, one batch or None per prefix) from
  `with_extra_batches`' dict."""
  prefixes = tuple(prefixes)
  own = {k: v for k, v in batch.items() if not k.startswith(prefixes)}
  extras = []
  for prefix in prefixes:
    extra = {k[len(prefix):]: v for k, v in batch.items()
             if k.startswith(prefix)}
    extras.append(extra or None)
  return own, extras
