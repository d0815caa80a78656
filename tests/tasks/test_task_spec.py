"""TaskSpec: losses against NumPy formulas, masks, jit, predictions, errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.tasks.spec import TaskSpec, task_from_config

B = 16


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_bce(logits, y):
  p = np_sigmoid(logits.astype(np.float64))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def make_case(head, num_classes=1, seed=0):
  """(task, outputs, batch, per-example numpy loss)."""
  rng = np.random.default_rng(seed)
  task = TaskSpec("t", "y", head, num_classes, mask="m")
  outputs = rng.normal(size=(B, task.out_dim)).astype(np.float32)
  if head == "binary":
    y = (rng.random(B) < 0.5).astype(np.float32)
    per = np_bce(outputs[:, 0], y)
  elif head == "regression" and num_classes == 1:
    y = rng.normal(size=B).astype(np.float32)
    per = (outputs[:, 0].astype(np.float64) - y) ** 2
  elif head == "regression":
    y = rng.normal(size=(B, num_classes)).astype(np.float32)
    per = ((outputs.astype(np.float64) - y) ** 2).mean(1)
  elif head == "multiclass":
    y = rng.integers(0, num_classes, B).astype(np.int32)
    per = -np.log(np_softmax(outputs.astype(np.float64))[np.arange(B), y])
  else:  # multilabel
    y = (rng.random((B, num_classes)) < 0.5).astype(np.float32)
    per = np_bce(outputs, y).mean(1)
  mask = (rng.random(B) < 0.6).astype(np.float32)
  mask[0] = 1.0
  return task, outputs, {"y": y, "m": mask}, per


CASES = [("binary", 1), ("regression", 1), ("regression", 3),
         ("multiclass", 4), ("multilabel", 3)]


@pytest.mark.parametrize("head,num_classes", CASES)
def test_loss_matches_numpy(head, num_classes):
  task, outputs, batch, per = make_case(head, num_classes)
  m = batch["m"]
  unmasked = TaskSpec("t", "y", head, num_classes)
  np.testing.assert_allclose(unmasked.per_example_loss(outputs, batch), per,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(unmasked.loss(outputs, batch), per.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(task.loss(outputs, batch),
                             (per * m).sum() / m.sum(), rtol=1e-5)
  loss = task.loss(outputs, batch)
  assert loss.shape == () and loss.dtype == jnp.float32


@pytest.mark.parametrize("head,num_classes", CASES)
def test_all_zero_mask_gives_zero_finite_loss_and_gradient(head, num_classes):
  task, outputs, batch, _ = make_case(head, num_classes)
  batch["m"] = np.zeros(B, np.float32)
  assert float(task.loss(outputs, batch)) == 0.0
  grad = jax.grad(task.loss)(jnp.asarray(outputs), batch)
  assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_masked_out_nan_labels_do_not_leak():
  task, outputs, batch, per = make_case("regression", 1)
  m = batch["m"]
  batch["y"] = np.where(m > 0, batch["y"], np.nan).astype(np.float32)
  loss, grad = jax.value_and_grad(task.loss)(jnp.asarray(outputs), batch)
  np.testing.assert_allclose(loss, (per * m).sum() / m.sum(), rtol=1e-5)
  assert np.all(np.isfinite(grad))
  assert not np.any(np.asarray(grad)[m == 0])
  # Missing multiclass labels may be -1.
  task, outputs, batch, per = make_case("multiclass", 4)
  batch["y"] = np.where(batch["m"] > 0, batch["y"], -1).astype(np.int32)
  np.testing.assert_allclose(task.loss(outputs, batch),
                             (per * batch["m"]).sum() / batch["m"].sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("head,num_classes", CASES)
def test_loss_jits_and_task_is_a_static_argument(head, num_classes):
  task, outputs, batch, _ = make_case(head, num_classes)
  eager = task.loss(outputs, batch)
  np.testing.assert_allclose(jax.jit(task.loss)(outputs, batch), eager,
                             rtol=1e-6)
  as_static = jax.jit(lambda t, o, b: t.loss(o, b), static_argnums=0)
  np.testing.assert_allclose(as_static(task, outputs, batch), eager, rtol=1e-6)


def test_predict_shapes_and_values():
  out = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(TaskSpec("a", "y", "binary").predict(out[:, :1]),
                             np_sigmoid(out[:, 0]), rtol=1e-6)
  np.testing.assert_allclose(
      TaskSpec("a", "y", "multiclass", 3).predict(out), np_softmax(out),
      rtol=1e-6)
  np.testing.assert_allclose(
      TaskSpec("a", "y", "multilabel", 3).predict(out), np_sigmoid(out),
      rtol=1e-6)
  np.testing.assert_array_equal(
      TaskSpec("a", "y", "regression").predict(out[:, :1]), out[:, 0])
  np.testing.assert_array_equal(
      TaskSpec("a", "y", "regression", 3).predict(out), out)


def test_out_dim_and_shapes():
  assert TaskSpec("a", "y", "binary").out_dim == 1
  assert TaskSpec("a", "y", "regression").out_dim == 1
  assert TaskSpec("a", "y", "regression", 7).out_dim == 7
  spec = TaskSpec("a", "y", "multiclass", 5)
  assert (spec.out_dim, spec.pred_shape, spec.label_shape) == (5, (5,), ())
  spec = TaskSpec("a", "y", "multilabel", 5)
  assert (spec.out_dim, spec.pred_shape, spec.label_shape) == (5, (5,), (5,))


def test_bad_fields_raise_clear_errors():
  with pytest.raises(UnknownNameError, match="Did you mean 'binary'") as err:
    TaskSpec("a", "y", "bianry")
  assert "multilabel" in str(err.value)  # lists the valid heads
  with pytest.raises(UnknownNameError, match="'auc'"):
    TaskSpec("a", "y", "binary", metrics=("acu",))
  with pytest.raises(ValueError, match="does not apply"):
    TaskSpec("a", "y", "regression", metrics=("auc",))
  with pytest.raises(ValueError, match="multilabel"):
    TaskSpec("a", "y", "binary", num_classes=3)
  with pytest.raises(ValueError, match="num_classes >= 2"):
    TaskSpec("a", "y", "multiclass", num_classes=1)
  with pytest.raises(ValueError, match="non-empty"):
    TaskSpec("", "y", "binary")
  with pytest.raises(ValueError, match="sequence of names"):
    TaskSpec("a", "y", "binary", metrics="auc")


def test_bad_batches_raise_clear_errors():
  task = TaskSpec("ctr", "click", "binary")
  with pytest.raises(ValueError, match=r"\[B, 1\]"):
    task.loss(jnp.zeros((4, 2)), {"click": jnp.zeros(4)})
  with pytest.raises(UnknownNameError, match="'click'"):
    task.loss(jnp.zeros((4, 1)), {"clicks": jnp.zeros(4)})
  with pytest.raises(ValueError, match="needs shape"):
    task.loss(jnp.zeros((4, 1)), {"click": jnp.zeros((4, 2))})


def test_task_from_config():
  spec = task_from_config({"name": "ctr", "label": "click", "head": "binary",
                           "metrics": ["auc"]})
  assert spec == TaskSpec("ctr", "click", "binary", metrics=("auc",))
  cfg = ml_collections.ConfigDict({"name": "genre", "label": "g",
                                   "head": "multilabel", "num_classes": 18,
                                   "mask": "has_g"})
  assert task_from_config(cfg) == TaskSpec("genre", "g", "multilabel", 18,
                                           mask="has_g")
  with pytest.raises(UnknownNameError, match="'num_classes'"):
    task_from_config({"name": "a", "label": "y", "head": "multiclass",
                      "num_class": 3})
  with pytest.raises(ValueError, match="head"):
    task_from_config({"name": "a", "label": "y"})
