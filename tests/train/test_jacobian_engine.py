"""`parallel.jacobian_engine`: the one rule for `train.jacobian_engine`."""
import jax
import pytest

from mtrec_jax.train import parallel


@pytest.mark.parametrize("platform, want", [
    ("cpu", "unrolled"), ("gpu", "vmap"), ("cuda", "vmap"), ("tpu", "vmap")])
def test_auto_is_unrolled_on_cpu_only(platform, want):
  assert parallel.jacobian_engine("auto", platform) == want


def test_auto_reads_this_machine_and_names_pass_through():
  here = jax.devices()[0].platform
  assert parallel.jacobian_engine() == ("unrolled" if here == "cpu"
                                        else "vmap")
  for name in parallel.JACOBIAN_ENGINES:
    assert parallel.jacobian_engine(name, "cpu") == name
    assert parallel.jacobian_engine(name, "gpu") == name


def test_unknown_engine_names_the_choices():
  with pytest.raises(ValueError, match="'vamp' is not one of auto, vmap, "
                     "unrolled"):
    parallel.jacobian_engine("vamp")
