"""mtrec-jax: task-weighting strategies for multi-task recommendation in JAX."""

__version__ = "0.1.0"


def load_run(*args, **kwargs):
  """A trained run, ready to predict and recommend (`serve.load.load_run`;
  imported on first use, so `import mtrec_jax` stays light)."""
  from mtrec_jax.serve.load import load_run as load
  return load(*args, **kwargs)
