"""One-sided partial optimal transport through a dummy source, solved with ott-jax.

The spec's problem: m selected points each ship mass 1/m to the n real points of their
class, and a real point receives at most kappa/n. It is solved as a balanced problem by
adding a dummy source row with mass kappa - 1 and constant cost `delta` to every column:

    a = (1/m, ..., 1/m, kappa - 1)   [m + 1]
    b = (kappa/n, ..., kappa/n)      [n]   (n counts real columns; padding gets 0)

with entropic regularisation epsilon, in the log domain (ott `lse_mode`). The reported
value is the transport cost of the real rows only: no entropy term, no dummy row.

Everything here is a pure function of arrays, so it can be jitted and vmapped; the
solver's `threshold` and `max_iterations` are Python numbers (static under jit).
"""

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from gadc_jax import defaults

# Iterations between two checks of the marginal error. A check costs about half an
# iteration (one more pass over the m+1 x n kernel); at the presets' epsilon a solve meets
# its threshold in about 5 iterations, warm or cold, so ott's default of 10 would run twice
# the iterations needed, while checking every iteration would add half again.
CHECK_EVERY = 5


class PartialOTOutput(NamedTuple):
  """Solution of one partial OT problem with m rows and n columns.

  value:     []      sum over real rows of plan * cost (no entropy, no dummy row).
  plan:      [m, n]  transport plan of the real rows (dummy row dropped).
  f:         [m + 1] row potentials, the dummy row last (-inf for massless rows).
  g:         [n]     column potentials (-inf for masked columns).
  converged: []      bool, the column-marginal error was below the threshold when the
                     solve stopped (False: it stopped at the iteration cap above the
                     threshold, or an iterate was NaN; the other fields are then those of
                     the last iterate).
  n_iters:   []      int, Sinkhorn iterations run.
  """
  value: jax.Array
  plan: jax.Array
  f: jax.Array
  g: jax.Array
  converged: jax.Array
  n_iters: jax.Array


# Classes are padded (masked) to a multiple of this many images where one class's partial
# OT is solved alone (scoring, diagnostics), so classes of slightly different sizes share
# one compiled program: an ImageNet class of 732 to 1,300 images costs a compile, not 400.
SIZE_BUCKET = 256


def bucket_size(n: int) -> int:
  """The padded size of a class of n images: n rounded up to a multiple of SIZE_BUCKET."""
  return -(-n // SIZE_BUCKET) * SIZE_BUCKET


def _masked_pairs(cost_full: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """[n, n] bool: both endpoints real."""
  n = cost_full.shape[0]
  mask = jnp.ones(n, bool) if mask is None else mask
  return mask[:, None] & mask[None, :]


def _kth_smallest_nonnegative(values: jax.Array, k: jax.Array) -> jax.Array:
  """The k-th smallest (0-based) of non-negative float32 values, +inf allowed.

  Non-negative floats order like their int32 bit patterns, so a 31-step bisection over
  bit patterns with one counting pass each finds the exact order statistic; that is far
  cheaper than sorting the n^2 entries of a class's cost matrix.
  """
  bits = jnp.maximum(jax.lax.bitcast_convert_type(values, jnp.int32), 0)  # -0.0 -> +0.0

  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits <= mid) > k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  lo, _ = jax.lax.fori_loop(0, 31, step, (jnp.int32(0), jnp.int32(0x7F800000)))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def class_delta(cost_full: jax.Array, mask: Optional[jax.Array],
                delta_factor: float) -> jax.Array:
  """delta_factor * median of the class's n x n cost matrix over real entries.

  The lower median (as `torch.median`, which the public release uses), diagonal included.
  Padding entries count as +inf so that they sit above the median.

  Args:
    cost_full: [n, n] squared distances (>= 0) between the class's images.
    mask: [n] bool real images, or None when nothing is padded.
    delta_factor: scalar.
  Returns:
    [] the dummy row's constant cost.
  """
  pairs = _masked_pairs(cost_full, mask)
  values = jnp.where(pairs, cost_full, jnp.inf).astype(jnp.float32)
  return delta_factor * _kth_smallest_nonnegative(values, (jnp.sum(pairs) - 1) // 2)


def resolve_epsilon(cost_full: jax.Array, mask: Optional[jax.Array], epsilon: float,
                    epsilon_rel: Optional[float]) -> jax.Array:
  """Absolute epsilon, or epsilon_rel * mean of the class's cost over real entries.

  Args:
    cost_full: [n, n] squared distances between the class's images.
    mask: [n] bool real images, or None.
    epsilon: absolute regularisation, used when epsilon_rel is None.
    epsilon_rel: relative regularisation (scale-free), or None.
  Returns:
    [] the epsilon to solve with.
  """
  if epsilon_rel is None:
    return jnp.asarray(epsilon, jnp.float32)
  pairs = _masked_pairs(cost_full, mask)
  mean = jnp.sum(jnp.where(pairs, cost_full, 0.0)) / jnp.sum(pairs)
  return epsilon_rel * mean


def marginals(m: int, n: int, kappa, row_mask: Optional[jax.Array] = None,
              col_mask: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """Marginals of the augmented balanced problem.

  Args:
    m: number of real rows (static).
    n: number of columns (static).
    kappa: column capacity factor, >= 1.
    row_mask: [m] bool active rows (each ships 1/#active), or None for all.
    col_mask: [n] bool real columns (each receives kappa/#real), or None for all.
  Returns:
    a [m + 1] (dummy mass kappa - 1 last) and b [n].
  """
  row_mask = jnp.ones(m, bool) if row_mask is None else row_mask
  col_mask = jnp.ones(n, bool) if col_mask is None else col_mask
  a_rows = row_mask / jnp.sum(row_mask)
  a = jnp.concatenate([a_rows, jnp.reshape(kappa - 1.0, (1,))]).astype(jnp.float32)
  b = (kappa * col_mask / jnp.sum(col_mask)).astype(jnp.float32)
  return a, b


def solve(cost: jax.Array, *, delta, epsilon, kappa,
          col_mask: Optional[jax.Array] = None,
          row_mask: Optional[jax.Array] = None,
          threshold: float = defaults.SINKHORN_THRESHOLD,
          max_iterations: int = defaults.SINKHORN_MAX_ITERATIONS,
          init: Optional[Tuple[jax.Array, jax.Array]] = None) -> PartialOTOutput:
  """Entropic one-sided partial OT of m selected rows onto a class's n columns.

  Args:
    cost: [m, n] squared distances from the selected rows to the class's images.
    delta: [] constant cost of the dummy row (see `class_delta`).
    epsilon: [] absolute entropic regularisation (see `resolve_epsilon`).
    kappa: [] column capacity factor; kappa = 1 gives balanced OT (dummy row massless).
    col_mask: [n] bool real columns; padding receives no mass and n counts real ones only.
    row_mask: [m] bool rows that take part (each ships 1/#active); others are massless.
    threshold: L1 error of the column marginal that counts as converged (static).
    max_iterations: iteration cap (static); the error is checked every `CHECK_EVERY`
      iterations, so the cap is effectively rounded up to a multiple of it.
    init: optional warm start (f [m + 1], g [n]) in ott's log-domain convention,
      plan = exp((f_i + g_j - C_ij) / epsilon).
  Returns:
    PartialOTOutput; its `converged` says whether the threshold or the cap stopped it.
  """
  m, n = cost.shape
  a, b = marginals(m, n, kappa, row_mask, col_mask)
  dummy = jnp.full((1, n), delta, cost.dtype)
  geom = geometry.Geometry(cost_matrix=jnp.concatenate([cost, dummy], axis=0),
                           epsilon=epsilon)
  problem = linear_problem.LinearProblem(geom, a=a, b=b)
  # Forward only: unrolled/implicit differentiation machinery is not needed here.
  solver = sinkhorn.Sinkhorn(lse_mode=True, threshold=threshold,
                             max_iterations=max_iterations, inner_iterations=CHECK_EVERY,
                             implicit_diff=None)
  out = solver(problem, init=init)
  plan = out.matrix[:m]
  # Massless rows and masked columns carry f or g = -inf; their plan entries are exact 0.
  value = jnp.sum(jnp.where(plan > 0, plan * cost, 0.0))
  return PartialOTOutput(value=value, plan=plan, f=out.f, g=out.g,
                         converged=out.converged, n_iters=out.n_iters)
