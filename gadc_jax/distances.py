"""The pairwise squared Euclidean distance, the one geometry every part here measures with."""

import jax
import jax.numpy as jnp
import numpy as np


def pairwise_sq_dists(x, y):
  """Squared Euclidean distances [n, p] between the rows of x [n, D] and y [p, D].

  The matmul form ||x||^2 + ||y||^2 - 2 x.y, clamped at 0 (rounding can make it slightly
  negative). NumPy inputs give NumPy in their own dtype (float64 for exact diagnostics); JAX
  inputs give JAX with a full-precision matmul (no TF32 / bf16 passes on accelerators).
  Callers that care about cancellation centre x and y first: distances are shift-invariant.
  """
  if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
    xp, dot = np, x @ y.T
  else:
    xp, dot = jnp, jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  sq = xp.sum(x * x, axis=1)[:, None] + xp.sum(y * y, axis=1)[None, :] - 2.0 * dot
  return xp.maximum(sq, 0.0)
