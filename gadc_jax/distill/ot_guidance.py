"""OT guidance (the paper's G_W): the entropic OT cost between a class's generated set and
real samples of the class, and its gradient with respect to the sample being generated.

    X = {x_1, ..., x_{n-1} (earlier samples, fixed), x_n (the current x0_hat)}   [K, d]
    Y = real samples of the class in model space                                 [R, d]
    C_ij = ||x_i - y_j||_1,  a = uniform over the valid rows of X,  b = uniform over Y
    G_W = <P*, C>  with P* the entropic plan (Sinkhorn, log domain, epsilon absolute)

<P*, C> is POT's `sinkhorn2` value (the transport cost of the entropic plan, no entropy
term). X has a fixed number K of rows, so that one compilation serves every IPC index:
rows not yet generated carry no mass (`row_mask`). Differentiation goes through the plan
too, by backpropagation through the Sinkhorn iterations (ott-jax's unrolled mode): implicit
differentiation solves a linear system in diag(a), which is singular for massless rows, and
with the sampler's capped iterations the unrolled gradient is that of what was computed.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn


def l1_cost(x: jax.Array, y: jax.Array) -> jax.Array:
  """[K, d], [R, d] -> [K, R] l1 distances."""
  return jnp.sum(jnp.abs(x[:, None, :] - y[None, :, :]), axis=-1)


def relative_epsilon(x: jax.Array, y: jax.Array, epsilon_rel: float,
                     row_mask: Optional[jax.Array] = None) -> jax.Array:
  """epsilon_rel * the mean l1 cost over valid rows, held constant under differentiation
  (it sets the scale of the blur, it is not a quantity to move samples along).

  Args:
    x: [K, d]; y: [R, d]; row_mask: [K] bool valid rows of x, or None for all.
  Returns:
    [] absolute epsilon.
  """
  cost = jax.lax.stop_gradient(l1_cost(x, y))
  mask = jnp.ones(x.shape[0], bool) if row_mask is None else row_mask
  mean = jnp.sum(jnp.where(mask[:, None], cost, 0.0)) / (jnp.sum(mask) * y.shape[0])
  return epsilon_rel * mean


def ot_cost(x: jax.Array, y: jax.Array, epsilon: jax.Array,
            row_mask: Optional[jax.Array] = None, *, threshold: float = 1e-3,
            max_iterations: int = 100,
            init: Optional[Tuple[jax.Array, jax.Array]] = None):
  """<P*, C> of the entropic OT between the valid rows of x and y, uniform weights.

  Args:
    x: [K, d] the generated set (rows outside row_mask carry no mass).
    y: [R, d] real samples.
    epsilon: [] absolute entropic regularisation (see `relative_epsilon`).
    row_mask: [K] bool valid rows, or None for all.
    threshold, max_iterations: Sinkhorn's stopping rule (static); ott checks every 10
      iterations. The sampler caps iterations and warm-starts from the previous step.
    init: optional (f [K], g [R]) log-domain potentials to start from.
  Returns:
    (value [], (f [K], g [R])): the cost and the potentials (a warm start for the next solve).
  """
  mask = jnp.ones(x.shape[0], bool) if row_mask is None else row_mask
  a = mask / jnp.sum(mask)
  b = jnp.full(y.shape[0], 1.0 / y.shape[0], x.dtype)
  cost = l1_cost(x, y)
  geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
  solver = sinkhorn.Sinkhorn(lse_mode=True, threshold=threshold,
                             max_iterations=max_iterations, implicit_diff=None)
  out = solver(linear_problem.LinearProblem(geom, a=a.astype(x.dtype), b=b), init=init)
  plan = out.matrix
  # Massless rows have f = -inf: their plan entries are exact zeros, and must not become
  # 0 * inf in the sum.
  value = jnp.sum(jnp.where(mask[:, None], plan * cost, 0.0))
  return value, (out.f, out.g)


def current_row_gradient(earlier: jax.Array, earlier_mask: jax.Array, current: jax.Array,
                         real: jax.Array, epsilon_rel: float, *, threshold: float = 1e-3,
                         max_iterations: int = 100, init=None):
  """G_W and its gradient with respect to the current sample only (earlier ones are fixed).

  Args:
    earlier: [K - 1, d] earlier samples of the class; earlier_mask: [K - 1] bool valid ones.
    current: [d] the current sample's x0_hat.
    real: [R, d] real samples of the class.
    epsilon_rel: epsilon relative to the mean cost of the set.
    threshold, max_iterations, init: as `ot_cost` (init over the K rows, current last).
  Returns:
    (value [], gradient [d], potentials (f [K], g [R])).
  """
  earlier = jax.lax.stop_gradient(earlier)
  mask = jnp.concatenate([earlier_mask, jnp.ones((1,), bool)])

  def cost_of(row):
    x = jnp.concatenate([earlier, row[None]], axis=0)
    eps = relative_epsilon(x, real, epsilon_rel, mask)
    return ot_cost(x, real, eps, mask, threshold=threshold, max_iterations=max_iterations,
                   init=init)

  (value, potentials), grad = jax.value_and_grad(cost_of, has_aux=True)(current)
  return value, grad, potentials
