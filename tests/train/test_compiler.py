"""train.compiler: XLA compile presets of the training step.

A preset may change rounding, never the math: a run compiled with
'cpu_fast' ends where the 'default' run ends up to float tolerance, under
its own config hash; a population of it equals its solo runs; a bad name
fails before training with the valid names.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.train import compiler, population
from tests.train.test_population import assert_same_runs, sweep_of, tiny


def test_presets_give_options_only_on_cpu():
  assert compiler.compiler_options("default") is None
  assert compiler.compiler_options("cpu_fast", platform="gpu") is None
  options = compiler.compiler_options("cpu_fast", platform="cpu")
  assert options == compiler.PRESETS["cpu_fast"]
  options["xla_cpu_use_onednn"] = False  # a copy: the preset is unchanged
  assert compiler.PRESETS["cpu_fast"]["xla_cpu_use_onednn"] is True


def test_unknown_preset_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"train.compiler must be one of "
                     r"'default', 'cpu_fast', got 'cpu_fats'.*'cpu_fast'"):
    compiler.compiler_options("cpu_fats")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")
def test_options_reach_xla():
  """jax.jit takes the preset: the same function, compiled another way."""
  x = jnp.linspace(-3.0, 3.0, 4 * 200).reshape(4, 200)
  f = lambda v: jax.nn.softmax(v @ v.T, axis=-1)  # noqa: E731
  fast = jax.jit(f, compiler_options=compiler.compiler_options("cpu_fast"))
  np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(jax.jit(f)(x)),
                             rtol=1e-5, atol=1e-7)


def test_cpu_fast_run_matches_default_and_its_population(tmp_path):
  """Solo 'cpu_fast' = solo 'default' up to rounding (other hash); a
  population of 2 'cpu_fast' = its solo runs."""
  fast = tiny(seeds=(0, 1), **{"train.compiler": "cpu_fast"})
  solo, _ = sweep_of(fast, tmp_path, "solo")
  pop, _ = sweep_of(fast, tmp_path, "pop", population.PopulationTrainer(2))
  assert_same_runs(solo, pop)
  default, _ = sweep_of(tiny(seeds=(0, 1)), tmp_path, "default")
  for a, b in zip(default.results, solo.results):
    assert a["config_hash"] != b["config_hash"]
    assert a["best_step"] == b["best_step"]
    for k, v in a["metrics"].items():
      np.testing.assert_allclose(b["metrics"][k], v, rtol=1e-4, atol=1e-6,
                                 err_msg=k)


def test_bad_preset_fails_the_run_before_training(tmp_path):
  out, _ = sweep_of(tiny(seeds=(0,), **{"train.compiler": "fast"}),
                    tmp_path, "bad")
  (result,) = out.results
  assert result["status"] == "failed"
  assert "train.compiler must be one of" in result["error"]
