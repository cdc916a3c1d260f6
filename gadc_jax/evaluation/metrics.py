"""Sample-quality metrics on features: FID, sFID, KID, Inception Score, precision and recall.

The definitions follow ADM's evaluator (Dhariwal & Nichol, 2021, `evaluations/evaluator.py`):

- FID: the Fréchet distance between Gaussians fitted to two feature sets,
  ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64; S is the unbiased
  (N - 1) covariance, as np.cov.
- sFID: the same distance on spatial features (ADM: the first 7 channels of Inception's
  mixed_6/conv, [N, 17, 17, 7] flattened to 2023-d).
- Inception Score: exp(E_x KL(p(y|x) || p(y))) per split, p(y) the split's marginal; for
  Inception, p(y|x) = softmax(pool_3 . W) without the head's bias (the FID network's logits).
- KID (Binkowski et al., 2018; not in ADM): the unbiased MMD^2 with the kernel
  (x.y / D + 1)^3, averaged over random subsets; unlike FID it is unbiased in the number of
  samples, so small sample sets (~1,000) compare fairly.
- Improved precision and recall (Kynkäänniemi et al., 2019): a sample lies in a set's manifold
  if it is within the k-NN radius of one of the set's points.

Everything but the distance computations of precision/recall is host-side NumPy/SciPy in
float64; those run in jitted JAX blocks so that 50,000 x 2048 sets fit in bounded memory.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from gadc_jax import distances


def _check_features(name: str, features: Any, min_samples: int) -> np.ndarray:
  """`features` as a 2-D array [N, D]; a ValueError naming `name` when it cannot be used."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f'{name}: expected features [N, D], got shape {features.shape}')
  if len(features) < min_samples:
    raise ValueError(f'{name}: {len(features)} samples; at least {min_samples} are needed')
  if not np.all(np.isfinite(features)):
    raise ValueError(f'{name}: features contain NaN or inf')
  return features


def _check_widths(a: np.ndarray, b: np.ndarray) -> None:
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'feature widths differ: {a.shape[1]} vs {b.shape[1]}; both sets must '
                     'come from the same feature space')


# ----------------------------------------------------------------------------------------
# Gaussian statistics and the Fréchet distance.


class RunningStats(NamedTuple):
  """Sums that give the mean and covariance of features seen in batches (a pytree).

  Sums are of x - shift, where `shift` is a fixed reference point (the first batch's mean):
  the covariance is shift-invariant, and centring keeps sum(x x^T) - n mu mu^T from
  cancelling catastrophically when |mu| is large against the spread. Memory is O(D^2)
  whatever the number of samples; states of different hosts combine with `merge`.
  """
  count: np.ndarray   # [] int64
  shift: np.ndarray   # [D] float64
  sum: np.ndarray     # [D] float64, sum of (x - shift)
  outer: np.ndarray   # [D, D] float64, sum of (x - shift)(x - shift)^T

  @classmethod
  def empty(cls, dim: int) -> 'RunningStats':
    return cls(np.zeros((), np.int64), np.zeros(dim), np.zeros(dim), np.zeros((dim, dim)))

  def update(self, batch: np.ndarray) -> 'RunningStats':
    """Adds a batch of features [B, D]."""
    batch = np.asarray(batch)
    if batch.ndim != 2 or batch.shape[1] != len(self.sum):
      raise ValueError(f'expected a batch [B, {len(self.sum)}], got shape {batch.shape}')
    shift = np.mean(batch, axis=0, dtype=np.float64) if self.count == 0 else self.shift
    # float64 products, as np.cov: float32 rounding (1e-7 of the largest eigenvalue) would
    # lift the near-zero eigenvalues of an ill-conditioned covariance, and FID takes their
    # square roots (sqrt(1e-7) = 3e-4 per dimension).
    centred = batch.astype(np.float64) - shift
    return RunningStats(self.count + len(batch), shift, self.sum + centred.sum(axis=0),
                        self.outer + centred.T @ centred)

  def merge(self, other: 'RunningStats') -> 'RunningStats':
    """The stats of the union of both sets of samples (e.g. from two hosts)."""
    if other.count == 0:
      return self
    if self.count == 0:
      return other
    # Move `other`'s sums to this shift: x - s = (x - s') + d with d = s' - s.
    d = other.shift - self.shift
    moved_sum = other.sum + other.count * d
    moved_outer = (other.outer + np.outer(other.sum, d) + np.outer(d, other.sum)
                   + other.count * np.outer(d, d))
    return RunningStats(self.count + other.count, self.shift, self.sum + moved_sum,
                        self.outer + moved_outer)

  def finalize(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) in float64; sigma with the N - 1 normalisation of np.cov."""
    if self.count < 2:
      raise ValueError(f'{int(self.count)} samples; at least 2 are needed for a covariance')
    mean_centred = self.sum / self.count
    sigma = (self.outer - self.count * np.outer(mean_centred, mean_centred)) / (self.count - 1)
    return self.shift + mean_centred, sigma


def feature_statistics(features: Any, batch_size: int = 10_000
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) float64 of features [N, D], accumulated `batch_size` rows at a time."""
  features = _check_features('features', features, min_samples=2)
  stats = RunningStats.empty(features.shape[1])
  for start in range(0, len(features), batch_size):
    stats = stats.update(features[start:start + batch_size])
  return stats.finalize()


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
  """F [D, r] with F F^T = sigma, r = numerical rank, for a symmetric PSD sigma [D, D].

  Pivoted Cholesky (LAPACK ?pstrf) stops at the numerical rank, so singular covariances
  (fewer samples than dimensions, constant features) factor without an eps * I offset.
  """
  lower, piv, rank, info = scipy.linalg.lapack.dpstrf(sigma, lower=1)
  if info < 0:
    raise ValueError(f'LAPACK dpstrf: argument {-info} is invalid')
  factor = np.empty((len(sigma), rank))
  factor[piv - 1] = np.tril(lower)[:, :rank]  # undo the pivoting: P^T sigma P = L L^T.
  return factor


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2. With
  S1 = F F^T (pivoted Cholesky, F of full column rank), the nonzero eigenvalues of S1 S2 are
  those of F^T S2 F, which is symmetric PSD: one factorisation, two products and one
  `eigvalsh`, instead of scipy.linalg.sqrtm's Schur decomposition of the non-symmetric S1 S2
  (which ADM and pytorch-fid use, retrying with S + eps * I when it fails). Faster, real by
  construction, and exact for singular covariances; eigenvalues that rounding makes slightly
  negative are clamped to 0. It agrees with the sqrtm value to rounding (see the tests).

  Args:
    mu1, mu2: means [D].
    sigma1, sigma2: covariances [D, D], symmetric PSD.

  Returns:
    The distance, >= 0 up to rounding.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  dim = mu1.shape[-1] if mu1.ndim else -1
  if not (mu1.shape == mu2.shape == (dim,) and sigma1.shape == sigma2.shape == (dim, dim)):
    raise ValueError(f'statistics do not match: mu1 {mu1.shape}, mu2 {mu2.shape}, '
                     f'sigma1 {sigma1.shape}, sigma2 {sigma2.shape}')
  for name, value in (('mu1', mu1), ('mu2', mu2), ('sigma1', sigma1), ('sigma2', sigma2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f'{name} contains NaN or inf')
  factor = _psd_factor(sigma1)
  product = factor.T @ sigma2 @ factor
  eigenvalues = scipy.linalg.eigvalsh((product + product.T) / 2, driver='evd')
  trace_sqrt = np.sum(np.sqrt(np.maximum(eigenvalues, 0.0)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_features(a: Any, b: Any) -> float:
  """FID between feature sets a [N, D] and b [M, D] (N, M >= 2), through their statistics."""
  a = _check_features('first set', a, min_samples=2)
  b = _check_features('second set', b, min_samples=2)
  _check_widths(a, b)
  return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def sfid_from_features(a: Any, b: Any) -> float:
  """sFID: the FID of spatial features a [N, D_s] and b [M, D_s], already flattened per image.

  ADM's inputs are Inception's mixed_6/conv activations [N, 17, 17, 768] cut to the first 7
  channels and flattened, [N, 2023]; only the features differ from FID, not the math.
  """
  return fid_from_features(a, b)


def reference_statistics(npz_path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The precomputed statistics of an ADM reference batch .npz.

  Reads only the keys `mu`, `sigma` (Inception pool_3, 2048-d) and `mu_s`, `sigma_s` (the
  spatial features of sFID); the images `arr_0` are not loaded. For a features array, use
  `feature_statistics`.

  Returns:
    {'fid': (mu, sigma), 'sfid': (mu_s, sigma_s)} in float64, each entry present only if both
    of its keys are in the file.
  """
  with np.load(npz_path) as data:
    return {metric: (data[mu].astype(np.float64), data[sigma].astype(np.float64))
            for metric, mu, sigma in (('fid', 'mu', 'sigma'), ('sfid', 'mu_s', 'sigma_s'))
            if mu in data.files and sigma in data.files}


# ----------------------------------------------------------------------------------------
# Kernel Inception Distance.


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of x [m, D] and y [m, D] (float64) with k(u, v) = (u.v / D + 1)^3.

  Within-set sums leave out the diagonal k(x_i, x_i); the cross term keeps every pair, as
  x and y are independent (Binkowski et al., 2018).
  """
  m, dim = x.shape

  def kernel(a, b):
    k = a @ b.T / dim + 1.0
    return k * k * k  # two products: faster than a float power.

  k_xx, k_yy = kernel(x, x), kernel(y, y)
  within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
  return float(within / (m * (m - 1)) - 2.0 * kernel(x, y).mean())


def kid_from_features(a: Any, b: Any, subset_size: int = 1000, num_subsets: int = 100,
                      seed: int = 0) -> tuple[float, float]:
  """(mean, std) of the KID of feature sets a [N, D] and b [M, D] over random subsets.

  Each of `num_subsets` draws takes m = min(subset_size, N, M) rows of a and m of b, without
  replacement and independently per draw (from `seed`), and computes their unbiased MMD^2;
  std is the population std over draws, as torch-fidelity reports it. Capping m at the
  smaller set is clean-fid's max_subset_size (torch-fidelity refuses instead).
  """
  if subset_size < 2 or num_subsets < 1:
    raise ValueError(f'KID needs subset_size >= 2 and num_subsets >= 1, got {subset_size} '
                     f'and {num_subsets}')
  a = _check_features('first set', a, min_samples=2)
  b = _check_features('second set', b, min_samples=2)
  _check_widths(a, b)
  m = min(subset_size, len(a), len(b))
  rng = np.random.default_rng(seed)
  mmds = []
  for _ in range(num_subsets):
    x = a[rng.choice(len(a), m, replace=False)].astype(np.float64)
    y = b[rng.choice(len(b), m, replace=False)].astype(np.float64)
    mmds.append(_polynomial_mmd2(x, y))
  return float(np.mean(mmds)), float(np.std(mmds))


# ----------------------------------------------------------------------------------------
# Inception Score.


def inception_score(logits: Any, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` contiguous splits of exp(E_x KL(p(y|x) || p(y))).

  As the original implementation (openai/improved-gan) and ADM, which report the mean over
  splits of 5,000; std is the population std over splits.

  Args:
    logits: [N, K] classifier logits; N >= splits. For the FID Inception network these are
      pool_3 . W without the head's bias, the logits of improved-gan and ADM.
    splits: number of splits.
  """
  logits = _check_features('logits', logits, min_samples=max(splits, 1))
  log_p = scipy.special.log_softmax(logits.astype(np.float64), axis=1)
  scores = []
  for part in np.array_split(log_p, splits):
    p = np.exp(part)
    log_marginal = np.log(np.mean(p, axis=0))
    # 0 log 0 = 0: a class no image of the split predicts contributes nothing.
    terms = np.where(p > 0, p * (part - log_marginal), 0.0)
    scores.append(np.exp(np.mean(np.sum(terms, axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------
# Improved precision and recall.


def _pad_blocks(x: np.ndarray, block: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """x [N, D] -> (blocks [N_pad / block, block, D] float32, valid [N_pad / block, block])."""
  pad = -len(x) % block
  padded = np.concatenate([x.astype(np.float32), np.zeros((pad, x.shape[1]), np.float32)])
  valid = np.arange(len(padded)) < len(x)
  return (jnp.asarray(padded.reshape(-1, block, x.shape[1])),
          jnp.asarray(valid.reshape(-1, block)))


@functools.partial(jax.jit, static_argnames=('k',))
def _knn_radii(blocks: jnp.ndarray, valid: jnp.ndarray, *, k: int) -> jnp.ndarray:
  """Squared distance of each point to its k-th nearest neighbour in the same set.

  The point itself is its 0-th neighbour (distance 0), so index k of the sorted distances is
  the k-th neighbour excluding self, as in ADM. One row block at a time against one column
  block at a time, keeping a running k + 1 smallest: memory O(block^2).

  Args:
    blocks: [nb, block, D] points; valid: [nb, block] False on padding.

  Returns:
    [nb, block] squared radii (meaningless on padding).
  """
  def row_block(rows):
    def column_block(smallest, cols):
      points, mask = cols
      d = jnp.where(mask[None, :], distances.pairwise_sq_dists(rows, points), jnp.inf)
      neg_top, _ = jax.lax.top_k(-jnp.concatenate([smallest, d], axis=1), k + 1)
      return -neg_top, None
    init = jnp.full((rows.shape[0], k + 1), jnp.inf, jnp.float32)
    smallest, _ = jax.lax.scan(column_block, init, (blocks, valid))
    return smallest[:, k]
  return jax.lax.map(row_block, blocks)


@jax.jit
def _manifold_membership(real: jnp.ndarray, real_radii: jnp.ndarray, fake: jnp.ndarray,
                         fake_radii: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Which fakes lie in the real manifold and which reals in the fake one.

  Every real-fake block of distances is computed once and serves both directions.

  Args:
    real: [nr, block, D]; real_radii: [nr, block] squared, -inf on padding (never "in").
    fake: [nf, block, D]; fake_radii: [nf, block] likewise.

  Returns:
    (fake_in [nf, block], real_in [nr, block]) booleans.
  """
  def fake_block(real_in, fakes):
    points, radii = fakes
    def real_block(fake_in, reals):
      d = distances.pairwise_sq_dists(points, reals[0])                 # [block_f, block_r]
      fake_in = fake_in | jnp.any(d <= reals[1][None, :], axis=1)
      return fake_in, jnp.any(d <= radii[:, None], axis=0)
    init = jnp.zeros(points.shape[0], bool)
    fake_in, real_hits = jax.lax.scan(real_block, init, (real, real_radii))
    return real_in | real_hits, fake_in
  real_in, fake_in = jax.lax.scan(fake_block, jnp.zeros(real_radii.shape, bool),
                                  (fake, fake_radii))
  return fake_in, real_in


def precision_recall(real: Any, fake: Any, k: int = 3, block_size: int = 4096
                     ) -> tuple[float, float]:
  """Improved precision and recall of `fake` against `real`, as ADM's evaluator.

  Precision: the fraction of fake samples within the k-NN radius of some real sample.
  Recall: the fraction of real samples within the k-NN radius of some fake sample. A point is
  within a radius when its squared distance is <= the squared radius. Distances are float32
  (ADM: float16 with a float32 fallback), computed `block_size` x `block_size` at a time.

  Args:
    real: [N, D] features of real images, N >= k + 1.
    fake: [M, D] features of generated images, M >= k + 1.
    k: the neighbourhood size of the manifold estimate.
    block_size: rows and columns per distance block; memory is O(block_size^2).

  Returns:
    (precision, recall), each in [0, 1].
  """
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  real = _check_features('real set', real, min_samples=k + 1)
  fake = _check_features('fake set', fake, min_samples=k + 1)
  _check_widths(real, fake)
  # The fewest blocks of at most block_size, as even as possible: padding is wasted work.
  largest = max(len(real), len(fake))
  block = -(-largest // -(-largest // block_size))
  real_blocks, real_valid = _pad_blocks(real, block)
  fake_blocks, fake_valid = _pad_blocks(fake, block)
  real_radii = jnp.where(real_valid, _knn_radii(real_blocks, real_valid, k=k), -jnp.inf)
  fake_radii = jnp.where(fake_valid, _knn_radii(fake_blocks, fake_valid, k=k), -jnp.inf)
  fake_in, real_in = _manifold_membership(real_blocks, real_radii, fake_blocks, fake_radii)
  precision = np.asarray(fake_in)[np.asarray(fake_valid)].mean()
  recall = np.asarray(real_in)[np.asarray(real_valid)].mean()
  return float(precision), float(recall)
