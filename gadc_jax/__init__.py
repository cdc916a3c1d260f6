"""gadc_jax: geometry-aware dataset condensation and diffusion training in JAX."""
