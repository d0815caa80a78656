"""mtrec-jax: task-weighting strategies for multi-task recommendation in JAX.

The `mtrec` commands as functions (`mtrec_jax.api`, imported on first use,
so `import mtrec_jax` stays light): `run`, `table`, `status`, `configs`
(`mtrec show`), `experiments` (`mtrec list`), `export`; and `load_run`.
"""

__version__ = "0.1.0"

# name -> the `api` function it is; not `experiment` or `sweep`, which are
# modules of this package.
_API = ("run", "table", "status", "configs", "experiments", "export")


def load_run(*args, **kwargs):
  """A trained run, ready to predict and recommend (`serve.load.load_run`;
  imported on first use, so `import mtrec_jax` stays light)."""
  from mtrec_jax.serve.load import load_run as load
  return load(*args, **kwargs)


def __getattr__(name: str):
  if name in _API:
    from mtrec_jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'mtrec_jax' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_API])
