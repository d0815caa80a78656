"""Independent reference implementations (not part of the mtrec_jax package)."""
