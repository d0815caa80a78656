"""mtrec-jax: task-weighting strategies for multi-task recommendation in JAX."""

__version__ = "0.1.0"
