"""Task-private inputs (`model.task_inputs`): only the owning tower sees them."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mtrec_jax.models import build_model, default_model_config

try:  # by package path: a bare `conftest` may be another folder's
  from tests.models.conftest import light_batch, light_features
except ImportError:  # tests/ not importable as a package.
  from conftest import light_batch, light_features  # type: ignore


def _model(task_inputs, tasks=(("rating", 1), ("next", 3)), name="mmoe"):
  cfg = default_model_config()
  cfg.name = name
  cfg.num_experts = 2
  cfg.expert_hidden = (8,)
  cfg.bottom_hidden = (8,)
  cfg.tower_hidden = (4,)
  cfg.task_inputs = task_inputs
  return build_model(cfg, light_features(), dict(tasks))


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe"])
def test_private_input_reaches_only_its_own_tower(name):
  model = _model({"rating": ("item",)}, name=name)
  batch = light_batch(6)
  params = model.init(jax.random.key(0), batch)["params"]
  other = dict(batch, item=(batch["item"] + 3) % 10)
  out, out2 = model.apply({"params": params}, batch), model.apply(
      {"params": params}, other)
  np.testing.assert_array_equal(out["next"], out2["next"])
  assert np.abs(out["rating"] - out2["rating"]).max() > 1e-6
  # The representation keeps one width: shared part + the private embedding,
  # zeros in the rows of tasks without private inputs.
  rep = model.apply({"params": params}, batch, method="represent")
  assert rep.shape == (2, 6, 8 + 4)
  np.testing.assert_array_equal(rep[1, :, 8:], 0.0)
  assert np.abs(rep[0, :, 8:]).max() > 0


def test_private_input_of_an_untrained_task_is_read_by_no_one():
  model = _model({"rating": ("item",)}, tasks=(("next", 3),))
  assert model.excluded == ("item",) and model.task_inputs == ()
  batch = light_batch(5)
  params = model.init(jax.random.key(0), batch)["params"]
  other = dict(batch, item=(batch["item"] + 3) % 10)
  np.testing.assert_array_equal(model.apply({"params": params}, batch)["next"],
                                model.apply({"params": params}, other)["next"])


def test_unknown_private_feature_is_an_error():
  with pytest.raises(ValueError, match="'itme' is not a feature"):
    _model({"rating": ("itme",)})
