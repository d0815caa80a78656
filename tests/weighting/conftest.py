"""Fixtures shared by the weighting tests."""
import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
  """Runs the test in float32, or in float64 with x64 enabled."""
  if request.param == "float64":
    with jax.enable_x64(True):
      yield jnp.float64
  else:
    yield jnp.float32
