"""How well a subset represents a known distribution: a Gaussian mixture whose modes are known.

For selection benchmarks where the true class distribution is given, not estimated: a
`GaussianMixture` (isotropic modes with unequal weights) draws the points and scores their
log density, and a subset S of m points is measured against a large fresh sample R of N points
of the mixture:

  w2              exact W2 between the uniform measures on S and on R (the transportation LP
                  of `diagnostics.w2`: exact, and free of POT, which is test-only).
  mmd             sqrt of the biased (V-statistic) MMD^2 of S against R with the Gaussian
                  kernel exp(-d^2 / h), h the median squared distance between distinct points
                  of R (the true distribution fixes the bandwidth, not the subset).
  modes_hit       share of the mixture's modes that S draws at least one point from.
  weight_hit      total weight of those modes: missing a light mode costs little here.
  outliers        points of S drawn from no mode (mode label -1).

Mode labels are those the points were drawn with, not a clustering: the test knows the truth.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gadc_jax import distances
from gadc_jax.transport import diagnostics

# The mode label of a point drawn from no mode of the mixture (an outlier).
OUTLIER = -1


class GaussianMixture(NamedTuple):
  """K isotropic Gaussian modes in D dimensions.

  means:   [K, D] mode centres.
  scales:  [K]    standard deviation of each mode (every direction).
  weights: [K]    mixture weights, positive, summing to 1.
  """
  means: jax.Array
  scales: jax.Array
  weights: jax.Array


@functools.partial(jax.jit, static_argnames='n')
def sample(key: jax.Array, mixture: GaussianMixture, n: int):
  """n iid points of the mixture: (points [n, D], mode [n] int32, the mode each came from)."""
  mode_key, noise_key = jax.random.split(key)
  mode = jax.random.categorical(mode_key, jnp.log(mixture.weights), shape=(n,))
  noise = jax.random.normal(noise_key, (n, mixture.means.shape[1]))
  points = mixture.means[mode] + mixture.scales[mode, None] * noise
  return points, mode.astype(jnp.int32)


@jax.jit
def log_density(mixture: GaussianMixture, points: jax.Array) -> jax.Array:
  """log p(x) [n] of points [n, D] under the mixture."""
  dim = points.shape[1]
  sq = distances.pairwise_sq_dists(points, mixture.means)  # [n, K]
  var = jnp.square(mixture.scales)
  log_mode = -0.5 * (sq / var + dim * jnp.log(2 * jnp.pi * var))
  return jax.nn.logsumexp(log_mode + jnp.log(mixture.weights), axis=1)


class Reference(NamedTuple):
  """A fresh sample of the true distribution and what every MMD against it shares.

  points:      [N, D] the sample.
  bandwidth:   []     h, the median squared distance over its distinct pairs.
  self_kernel: []     mean of exp(-d^2 / h) over all N^2 pairs (the R-R term of MMD^2).
  """
  points: jax.Array
  bandwidth: jax.Array
  self_kernel: jax.Array


def reference(points: jax.Array) -> Reference:
  """The Reference of a sample [N, D], N >= 2 (one N x N distance matrix, computed once)."""
  points = jnp.asarray(points, jnp.float32)
  if points.ndim != 2 or points.shape[0] < 2:
    raise ValueError(f'a reference sample needs points [N >= 2, D], got shape {points.shape}')
  return Reference(points, *_bandwidth_and_self_kernel(points))


@jax.jit
def _bandwidth_and_self_kernel(points):
  # Centred first: distances are shift-invariant and the matmul form cancels less.
  centred = points - jnp.mean(points, axis=0)
  sq = distances.pairwise_sq_dists(centred, centred)
  bandwidth = jnp.median(sq[jnp.triu_indices(points.shape[0], k=1)])
  return bandwidth, jnp.mean(jnp.exp(-sq / bandwidth))


def mmd(subset: jax.Array, ref: Reference) -> float:
  """MMD of subset [m, D] against the reference (module docstring)."""
  return float(_mmd(jnp.asarray(subset, jnp.float32), ref))


@jax.jit
def _mmd(subset, ref):
  shift = jnp.mean(ref.points, axis=0)
  s, r = subset - shift, ref.points - shift
  k_ss = jnp.mean(jnp.exp(-distances.pairwise_sq_dists(s, s) / ref.bandwidth))
  k_sr = jnp.mean(jnp.exp(-distances.pairwise_sq_dists(s, r) / ref.bandwidth))
  return jnp.sqrt(jnp.maximum(k_ss + ref.self_kernel - 2 * k_sr, 0.0))


def w2(subset, ref: Reference) -> float:
  """Exact W2 between the uniform measures on subset [m, D] and on the reference points.

  The LP has m x N variables: it takes seconds at m 50, N 1,000 on a CPU.
  """
  r = np.asarray(ref.points, np.float64)
  shift = r.mean(axis=0)
  s = np.asarray(subset, np.float64) - shift
  return diagnostics.w2(distances.pairwise_sq_dists(s, r - shift))


def mode_coverage(modes, weights) -> tuple[float, float]:
  """(share of modes hit, their total weight) by points with mode labels `modes` [m].

  Args:
    modes: [m] int mode of each selected point, OUTLIER for one from no mode.
    weights: [K] mixture weights.
  """
  weights = np.asarray(weights, np.float64)
  modes = np.asarray(modes)
  if np.any((modes < OUTLIER) | (modes >= len(weights))):
    raise ValueError(f'mode labels must lie in [{OUTLIER}, {len(weights)}), got {modes}')
  hit = np.zeros(len(weights), bool)
  hit[modes[modes != OUTLIER]] = True
  return float(hit.mean()), float(weights[hit].sum())


def subset_geometry(subset, modes, mixture: GaussianMixture, ref: Reference) -> dict:
  """Every measure of the module docstring for one subset, as Python numbers.

  Args:
    subset: [m, D] the selected points.
    modes: [m] their mode labels (OUTLIER for an outlier).
    mixture: the true distribution; ref: a fresh sample of it.

  Returns:
    {'w2', 'mmd', 'modes_hit', 'weight_hit', 'outliers'}.
  """
  modes_hit, weight_hit = mode_coverage(modes, mixture.weights)
  return {'w2': w2(subset, ref), 'mmd': mmd(subset, ref), 'modes_hit': modes_hit,
          'weight_hit': weight_hit, 'outliers': int(np.sum(np.asarray(modes) == OUTLIER))}
