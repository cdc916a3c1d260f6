"""Geometry diagnostics of a selected subset against its full class, in any feature space.

The features are an argument, so a selection can be judged in another network's space than
the one it was chosen in. For one class of n images and a subset S of m of them:

  w2        exact W2 distance between the uniform measures on S and on the class: the square
            root of the optimal cost under C_ij = ||x_i - x_j||^2. An m x n transportation
            LP solved by HiGHS (scipy.optimize.linprog): exact, needs only runtime
            dependencies, and fast at the sizes here (m <= 100, n <= 1300). POT's exact
            solver is a test-only dependency, and Sinkhorn would only approximate.
  pot_relative_eps
            one-sided partial OT cost of S onto the class (spec's POT term, converged
            entropic; `partial_ot.solve`) with kappa = pot_kappa, delta = pot_delta_factor *
            median of the class's n x n cost (diagonal included, as the objective) and
            epsilon = pot_epsilon_rel * mean of that cost (relative, so it means the same in
            any space).
  pot_objective_eps
            the same with the GADC objective's own kappa, delta_factor and epsilon (absolute,
            or its epsilon_rel): the POT term of J itself. Only where the objective's
            settings are given (the select job: the selection space, where J is defined; an
            absolute epsilon means nothing at another space's scale).
  mmd       sqrt of the biased (V-statistic) MMD^2 with the RBF kernel exp(-d^2 / h), h the
            median of the class's squared distances over distinct pairs i < j.
  mean_gap  ||mu_S - mu_c||.
  var_gap   sum_d |var_S,d - var_c,d|, unbiased variances (var_S = 0 when m = 1).
  coverage  fraction of class points whose nearest selected point is within their k-NN
            radius (distance to the k-th nearest other class point, k = knn_k).
  ce        mean classifier CE of the subset (only when ce is given).
"""

from typing import Mapping, Sequence

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from scipy import sparse

from gadc_jax import distances
from gadc_jax import validation
from gadc_jax.transport import partial_ot

def check_config(cfg, where: str = 'config.select.diagnostics') -> None:
  """One ValueError naming the first diagnostics option (`defaults.diagnostics()`) out of
  range; the select job calls it before any work."""
  validation.require(cfg, where, positive_ints=('knn_k',),
                     positive=('pot_kappa', 'pot_epsilon_rel'),
                     non_negative=('pot_delta_factor',))
  if cfg['pot_kappa'] < 1:
    raise ValueError(f'{where}.pot_kappa must be >= 1, got {cfg["pot_kappa"]!r}')


def class_sq_dists(features: np.ndarray) -> np.ndarray:
  """[n, n] float64 squared distances; centred first, so the matmul form loses little."""
  x = np.asarray(features, np.float64)
  x = x - x.mean(axis=0)
  d = distances.pairwise_sq_dists(x, x)
  np.fill_diagonal(d, 0.0)
  return d


def w2(cost: np.ndarray) -> float:
  """Exact W2 between uniform measures, from the [m, n] squared-distance cost.

  The marginals are scaled to m * n total mass (rows n, columns m) so that they and the
  optimal vertex are integers, which keeps HiGHS's absolute tolerances meaningful.
  """
  m, n = cost.shape
  a_eq = sparse.vstack([sparse.kron(sparse.eye(m), np.ones((1, n))),
                        sparse.kron(np.ones((1, m)), sparse.eye(n))], format='csr')
  b_eq = np.concatenate([np.full(m, n), np.full(n, m)]).astype(np.float64)
  res = optimize.linprog(np.ravel(cost), A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                         method='highs')
  if res.status != 0:
    raise RuntimeError(f'W2 transportation LP failed: {res.message}')
  return float(np.sqrt(max(res.fun / (m * n), 0.0)))


def mmd(sq: np.ndarray, selected: np.ndarray) -> float:
  """RBF-kernel MMD (biased) of the subset against the class; see the module docstring.

  Args:
    sq: [n, n] squared distances of the class.
    selected: [m] indices of the subset.
  """
  n = len(sq)
  pairs = sq[np.triu_indices(n, k=1)]
  # When most pairs coincide the median is 0; fall back to the mean, and to 1 when every
  # point coincides (then any bandwidth gives MMD 0).
  h = (np.median(pairs) if pairs.size else 0.0) or (pairs.mean() if pairs.size else 0.0) or 1.0
  k = np.exp(-sq / h)
  k_sc = k[selected]
  value = k_sc[:, selected].mean() + k.mean() - 2 * k_sc.mean()
  return float(np.sqrt(max(value, 0.0)))


def moment_gaps(features: np.ndarray, selected: np.ndarray) -> tuple[float, float]:
  """(||mu_S - mu_c||, sum_d |var_S,d - var_c,d|) with unbiased variances (0 for one row)."""
  x = np.asarray(features, np.float64)
  s = x[selected]

  def var(a):
    return a.var(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])

  return (float(np.linalg.norm(s.mean(axis=0) - x.mean(axis=0))),
          float(np.sum(np.abs(var(s) - var(x)))))


def coverage(sq: np.ndarray, selected: np.ndarray, k: int) -> float:
  """Fraction of class points whose nearest selected point lies within their k-NN radius.

  The radius of point j is its distance to its k-th nearest other class point (k capped at
  n - 1); a one-point class is covered by its only point.
  """
  n = len(sq)
  if n == 1:
    return 1.0
  others = sq + np.diag(np.full(n, np.inf))
  radius_sq = np.partition(others, min(k, n - 1) - 1, axis=1)[:, min(k, n - 1) - 1]
  # Row j of sq gives both j's radius and its distance to the subset, so a selected point
  # that is exactly j's k-th neighbour counts as within, free of rounding.
  nearest_sq = sq[:, selected].min(axis=1)
  return float(np.mean(nearest_sq <= radius_sq))


@functools.partial(jax.jit, static_argnames='relative')
def _partial_ot_value(full, mask, selected, kappa, delta_factor, epsilon, relative: bool):
  """The solve of `partial_pot` on the class's padded [W, W] cost, mask [W], subset [m]."""
  delta = partial_ot.class_delta(full, mask, delta_factor)
  epsilon = partial_ot.resolve_epsilon(full, mask, epsilon, epsilon if relative else None)
  return partial_ot.solve(full[selected], delta=delta, epsilon=epsilon, kappa=kappa,
                          col_mask=mask).value


def partial_pot(sq: np.ndarray, selected: np.ndarray, *, kappa: float, delta_factor: float,
                epsilon: float | None, epsilon_rel: float | None) -> float:
  """Converged one-sided partial OT cost of the subset onto its class (module docstring).

  Args:
    sq: [n, n] squared distances of the class.
    selected: [m] indices of the subset.
    kappa: column capacity factor.
    delta_factor: delta = delta_factor * median of sq.
    epsilon: absolute regularisation, used when epsilon_rel is None.
    epsilon_rel: relative regularisation (times the mean of sq), or None.
  """
  n = len(sq)
  width = partial_ot.bucket_size(n)
  full = np.zeros((width, width), np.float32)
  full[:n, :n] = sq
  relative = epsilon_rel is not None
  return float(_partial_ot_value(full, np.arange(width) < n, np.asarray(selected, np.int32),
                                 np.float32(kappa), np.float32(delta_factor),
                                 np.float32(epsilon_rel if relative else epsilon), relative))


def diagnostics(features: np.ndarray, selected_idx: np.ndarray, ce: np.ndarray | None,
                cfg, objective_cfg=None) -> dict[str, float]:
  """Every diagnostic of one class's subset (see the module docstring).

  Args:
    features: [n, D] the class's features (unpadded), in the space to judge in.
    selected_idx: [m] distinct row indices of the subset.
    ce: [n] classifier CE of the class's images, or None to leave 'ce' out.
    cfg: `gadc_jax.defaults.diagnostics()`.
    objective_cfg: the GADC objective's options (`gadc_jax.defaults.gadc()`: kappa,
      delta_factor, epsilon, epsilon_rel), or None to leave 'pot_objective_eps' out.

  Returns:
    {'w2', 'pot_relative_eps', 'mmd', 'mean_gap', 'var_gap', 'coverage'[,
    'pot_objective_eps'][, 'ce']} as Python floats.
  """
  features = np.asarray(features)
  selected = np.asarray(selected_idx, np.int64)
  n = len(features)
  if (selected.ndim != 1 or not selected.size or len(np.unique(selected)) != selected.size
      or selected.min() < 0 or selected.max() >= n):
    raise ValueError(f'selected_idx must be distinct indices in [0, {n}), got {selected}')
  sq = class_sq_dists(features)
  mean_gap, var_gap = moment_gaps(features, selected)
  out = {
      'w2': w2(sq[selected]),
      'pot_relative_eps': partial_pot(sq, selected, kappa=cfg.pot_kappa,
                                      delta_factor=cfg.pot_delta_factor, epsilon=None,
                                      epsilon_rel=cfg.pot_epsilon_rel),
      'mmd': mmd(sq, selected),
      'mean_gap': mean_gap,
      'var_gap': var_gap,
      'coverage': coverage(sq, selected, cfg.knn_k),
  }
  if objective_cfg is not None:
    out['pot_objective_eps'] = partial_pot(
        sq, selected, kappa=objective_cfg.kappa, delta_factor=objective_cfg.delta_factor,
        epsilon=objective_cfg.epsilon, epsilon_rel=objective_cfg.epsilon_rel)
  if ce is not None:
    out['ce'] = float(np.mean(np.asarray(ce, np.float64)[selected]))
  return out


def average(per_class: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """Mean of each diagnostic over classes; every dict must have the same keys."""
  if not per_class:
    raise ValueError('no diagnostics to average')
  keys = set(per_class[0])
  if any(set(d) != keys for d in per_class):
    raise ValueError('diagnostics of different classes have different keys')
  return {k: float(np.mean([d[k] for d in per_class])) for k in sorted(keys)}
