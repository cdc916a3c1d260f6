"""Baseline selection methods: random, herding, k-center, CCS, DQ and D2C.

Every method has the batched interface of all selection methods,

    select_<name>(problems, m, cfg, keys) -> SelectionOutput

with `problems` a `ClassProblem` with a leading batch axis B (padded), `m` images per class,
`cfg` the method's ConfigDict (`gadc_jax.defaults.method(name)`) and `keys` [B] PRNG keys, one per
class (the job derives them as fold_in(seed_key, class_id), so results do not depend on how
classes are batched). Only candidates are selected; padding rows change nothing. The
objective is NaN: the select job scores every subset with the GADC objective separately.
None of them solves partial OT, so the count of unconverged solves is 0.

Random, herding and k-center are array programs (jit + vmap over classes). CCS, DQ and D2C
have data-dependent control flow and run per class in NumPy; the random ones draw from a
NumPy Generator seeded from the class's key.
"""

import functools
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gadc_jax.selection.output import SelectionOutput
from gadc_jax.selection.problem import ClassProblem, unstack_problem
from gadc_jax.transport import diagnostics

D2C_MODES = ('lowest', 'highest', 'nearest')


def _check_batch(problems: ClassProblem, m: int) -> None:
  """Raises ValueError unless problems is batched and every class has m candidates."""
  if np.ndim(problems.features) != 3:
    raise ValueError('problems must have a leading batch axis: features [B, n, D], got '
                     f'shape {np.shape(problems.features)}')
  if m < 1:
    raise ValueError(f'm must be positive, got {m}')
  counts = np.sum(np.asarray(problems.candidate), axis=-1)
  short = np.flatnonzero(counts < m)
  if short.size:
    raise ValueError(f'classes at batch positions {short.tolist()} have fewer than m={m} '
                     f'candidates ({counts[short].tolist()})')


def _output(indices) -> SelectionOutput:
  """SelectionOutput of picks [B, m]: no objective (NaN) and no OT solves (0 unconverged)."""
  indices = np.asarray(indices, np.int32)
  batch = indices.shape[0]
  return SelectionOutput(indices=indices,
                         objective=np.full(batch, np.nan, np.float32),
                         unconverged=np.zeros(batch, np.int32))


# ---------------------------------------------------------------------------------------
# Array programs: random, herding, k-center.


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the real rows of x [n, D]; elementwise, so no low-precision matmul on TPU."""
  w = mask.astype(x.dtype)
  return jnp.sum(x * w[:, None], axis=0) / jnp.sum(w)


def _sq_dist_to(x: jax.Array, v: jax.Array) -> jax.Array:
  """Squared distances [n] from the rows of x [n, D] to v [D]."""
  return jnp.sum(jnp.square(x - v), axis=-1)


def _random_one(key: jax.Array, candidate: jax.Array, m: int) -> jax.Array:
  # The top m of iid uniform scores is a uniform m-subset. Each row's score comes from
  # fold_in(key, row), so a row's draw does not depend on how far the class is padded.
  rows = jnp.arange(candidate.shape[0])
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(rows)
  return lax.top_k(jnp.where(candidate, u, -1.0), m)[1]


def _herding_one(x: jax.Array, mask: jax.Array, candidate: jax.Array, m: int) -> jax.Array:
  mu = _masked_mean(x, mask)

  def pick(carry, t):
    total, available = carry
    # With t points the subset mean is (total + x_c) / t, so the best c minimises
    # ||x_c - (t mu - total)||^2.
    score = _sq_dist_to(x, t * mu - total)
    i = jnp.argmin(jnp.where(available, score, jnp.inf))
    return (total + x[i], available.at[i].set(False)), i

  steps = jnp.arange(1, m + 1, dtype=x.dtype)
  return lax.scan(pick, (jnp.zeros_like(mu), candidate), steps)[1]


def _kcenter_one(x: jax.Array, mask: jax.Array, candidate: jax.Array, m: int) -> jax.Array:
  to_mean = _sq_dist_to(x, _masked_mean(x, mask))
  first = jnp.argmin(jnp.where(candidate, to_mean, jnp.inf))

  def pick(carry, _):
    nearest, available = carry
    i = jnp.argmax(jnp.where(available, nearest, -jnp.inf))
    nearest = jnp.minimum(nearest, _sq_dist_to(x, x[i]))
    return (nearest, available.at[i].set(False)), i

  init = (_sq_dist_to(x, x[first]), candidate.at[first].set(False))
  rest = lax.scan(pick, init, None, length=m - 1)[1]
  return jnp.concatenate([first[None], rest])


@functools.partial(jax.jit, static_argnames='m')
def _random_batch(keys, candidate, m):
  return jax.vmap(functools.partial(_random_one, m=m))(keys, candidate)


@functools.partial(jax.jit, static_argnames=('one', 'm'))
def _features_batch(features, mask, candidate, one, m):
  return jax.vmap(functools.partial(one, m=m))(
      jnp.asarray(features, jnp.float32), mask, candidate)


def select_random(problems: ClassProblem, m: int, cfg, keys) -> SelectionOutput:
  """Uniform without replacement among each class's candidates, from the class's key."""
  del cfg  # No options.
  _check_batch(problems, m)
  return _output(_random_batch(keys, jnp.asarray(problems.candidate), m))


def select_herding(problems: ClassProblem, m: int, cfg, keys) -> SelectionOutput:
  """Greedily adds the candidate that brings the subset mean closest to the class mean.

  The class mean is over every real image (candidate or not); ties go to the lowest row.
  Indices are in pick order.
  """
  del cfg, keys  # No options; deterministic.
  _check_batch(problems, m)
  return _output(_features_batch(problems.features, problems.mask, problems.candidate,
                                 _herding_one, m))


def select_kcenter(problems: ClassProblem, m: int, cfg, keys) -> SelectionOutput:
  """k-center greedy: the candidate nearest the class mean, then farthest-first.

  Each further pick is the candidate farthest (Euclidean) from its nearest selected point;
  ties go to the lowest row. Indices are in pick order.
  """
  del cfg, keys  # No options; deterministic.
  _check_batch(problems, m)
  return _output(_features_batch(problems.features, problems.mask, problems.candidate,
                                 _kcenter_one, m))


# ---------------------------------------------------------------------------------------
# Per-class NumPy methods: CCS, DQ, D2C.


def _numpy_rngs(keys) -> list[np.random.Generator]:
  """One NumPy Generator per key, seeded deterministically from the key's bits."""
  seeds = np.asarray(jax.vmap(lambda k: jax.random.bits(k, (4,), jnp.uint32))(keys))
  return [np.random.default_rng(s.tolist()) for s in seeds]


def _per_class(problems: ClassProblem, m: int, keys,
               select_one: Callable[[ClassProblem, np.random.Generator | None], np.ndarray]
               ) -> SelectionOutput:
  """Runs select_one on each class without its padding and stacks the [m] picks.

  select_one gets the class's NumPy Generator, or None when keys is None (deterministic).
  """
  _check_batch(problems, m)
  batch = len(problems.features)
  rngs = [None] * batch if keys is None else _numpy_rngs(keys)
  return _output(np.stack([select_one(unstack_problem(problems, b), rngs[b])
                           for b in range(batch)]))


def _even_split(total: int, parts: int) -> np.ndarray:
  """Sizes [parts] summing to total, as equal as possible, the larger ones first."""
  return total // parts + (np.arange(parts) < total % parts)


def ccs_budgets(strata_sizes: np.ndarray, m: int) -> np.ndarray:
  """CCS's budget allocation (Zheng et al., ICLR 2023, Algorithm 1) over strata.

  Visits strata from the sparsest up (stable: equal sizes in stratum order) and gives each
  min(size, floor(remaining budget / strata left)). This is water-filling: the result sums
  to min(m, sum of sizes). With fewer picks than strata, floor(m / strata left) is 0 until
  m strata are left, so the sparse strata get nothing and the m densest one each.

  Args:
    strata_sizes: [k] int number of images in each stratum.
    m: budget.

  Returns:
    [k] int picks per stratum.
  """
  budgets = np.zeros(len(strata_sizes), int)
  left = m
  for rank, s in enumerate(np.argsort(strata_sizes, kind='stable')):
    budgets[s] = min(strata_sizes[s], left // (len(strata_sizes) - rank))
    left -= budgets[s]
  return budgets


def ccs_strata(scores: np.ndarray, beta: float, num_strata: int, m: int):
  """CCS's pruning and stratification of one class's candidates.

  Drops the floor(beta * n) hardest (highest score; ties drop the lower index first), but
  never so many that fewer than m remain, then splits the kept range [min, max] of scores
  into num_strata equal-width strata (the maximum falls in the last one).

  Args:
    scores: [n] difficulty of each candidate.
    beta: hard pruning rate.
    num_strata: k.
    m: budget, so that at least m candidates are kept.

  Returns:
    kept: [n'] positions into scores of the kept candidates, ascending.
    stratum: [n'] stratum of each kept candidate, in 0..num_strata-1.
  """
  n = len(scores)
  drop = min(int(np.floor(beta * n)), n - m)
  kept = np.sort(np.argsort(-scores, kind='stable')[drop:])
  s = scores[kept]
  width = (s.max() - s.min()) / num_strata
  stratum = (np.zeros(len(s), int) if width == 0 else
             np.minimum(((s - s.min()) / width).astype(int), num_strata - 1))
  return kept, stratum


def select_ccs(problems: ClassProblem, m: int, cfg, keys) -> SelectionOutput:
  """Coverage-centric coreset selection with CE_i as the difficulty score.

  Drops the hardest beta fraction of candidates, stratifies the rest by score into
  num_strata equal-width strata, allocates the budget with `ccs_budgets` and samples
  uniformly without replacement within each stratum.
  """
  def one(p: ClassProblem, rng: np.random.Generator) -> np.ndarray:
    cand = np.flatnonzero(p.candidate)
    kept, stratum = ccs_strata(p.ce[cand], cfg.beta, cfg.num_strata, m)
    budgets = ccs_budgets(np.bincount(stratum, minlength=cfg.num_strata), m)
    picks = [rng.choice(kept[stratum == s], q, replace=False)
             for s, q in enumerate(budgets) if q]
    return cand[np.concatenate(picks)]

  return _per_class(problems, m, keys, one)


DQ_SIMILARITIES = ('gradient', 'euclidean')


def _unit_rows(x: np.ndarray) -> np.ndarray:
  """Rows of x scaled to unit norm; zero rows stay zero (cosine 0 with anything)."""
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def dq_gradient_similarity(features: np.ndarray, probs: np.ndarray,
                           labels: np.ndarray) -> np.ndarray:
  """DQ's similarity as its release computes it: 0.5 + 0.5 * cosine of per-image gradients.

  The release (magic-research/Dataset_Quantization, dq/methods/submodular.py with
  methods_utils/cossim.py) embeds image i as the gradient of its loss with respect to the
  classifier's last layer, [dL/db, dL/dW] = [g_i, g_i h_i^T flattened], h_i the penultimate
  features (the input of the last layer). Its loss is CrossEntropyLoss applied to the
  softmax of the logits, so with p_i = softmax(z_i) and q_i = softmax(p_i),

      g_i = dL/dz_i = (diag(p_i) - p_i p_i^T)(q_i - onehot(y_i)),

  not p_i - onehot(y_i). The cosine of two such embeddings factorises,

      cos = (g_i . g_j)(1 + h_i . h_j) / (|g_i| |g_j| |(1, h_i)| |(1, h_j)|),

  so the K x D gradients are never formed. A zero gradient (p_i exactly one-hot in float32)
  has cosine 0 with everything here; the release divides 0 by 0 there.

  Args:
    features: [n, D] penultimate features h (as stored, not centred).
    probs: [n, K] classifier probabilities p.
    labels: [n] int true classes y.

  Returns:
    [n, n] float64 similarities in [0, 1].
  """
  p = np.asarray(probs, np.float64)
  q = np.exp(p - p.max(axis=1, keepdims=True))
  q /= q.sum(axis=1, keepdims=True)
  q[np.arange(len(p)), labels] -= 1.0  # dL/dp = q - onehot(y).
  g = p * q - p * np.sum(p * q, axis=1, keepdims=True)
  h = np.asarray(features, np.float64)
  h1 = np.concatenate([np.ones((len(h), 1)), h], axis=1)
  g, h1 = _unit_rows(g), _unit_rows(h1)
  return 0.5 + 0.5 * (g @ g.T) * (h1 @ h1.T)


def dq_euclidean_similarity(features: np.ndarray) -> np.ndarray:
  """c - ||f_i - f_j||^2 with c the largest squared distance: [n, n] float64, >= 0.

  With it the GraphCut gain of `dq_bins` is, up to a constant per step, the DQ paper's
  Eq. 3 on features (far from the bin S, close to the rest of U):

      P(x) = sum_{p in S} ||f(p) - f(x)||^2 - sum_{p in U \\ S} ||f(p) - f(x)||^2.
  """
  dist = diagnostics.class_sq_dists(features)
  return dist.max() - dist


def dq_bins(similarity: np.ndarray, num_bins: int) -> list[np.ndarray]:
  """Dataset quantization's bins (Zhou et al., ICCV 2023, Eq. 2-3) for one class.

  Bin b is built greedily from the images U not yet in a bin, as the release's GraphCut
  function with NaiveGreedy does it: it repeatedly adds the x in U \\ S with the largest
  gain

      sum_{p in U} s(p, x) - 2 sum_{p in S} s(p, x)

  of f(S) = sum_{i in U, j in S} s_ij - lambda sum_{i, j in S} s_ij, lambda = 1 (close to
  the rest of U, far from the bin so far). Bins have sizes as equal as possible (larger
  first); ties go to the lowest index. DQ's later patch dropping and MAE reconstruction
  concern images, not the choice, and are left out.

  Args:
    similarity: [n, n] symmetric similarities s of the images to quantise
      (`dq_gradient_similarity` or `dq_euclidean_similarity`).
    num_bins: N (at most n bins are made).

  Returns:
    min(N, n) disjoint index arrays into the rows, in pick order, covering 0..n-1.
  """
  n = len(similarity)
  remaining = np.arange(n)
  bins = []
  for size in _even_split(n, min(num_bins, n)):
    sub = similarity[np.ix_(remaining, remaining)]
    gain = sub.sum(axis=0)
    taken = np.zeros(len(remaining), bool)
    picks = []
    for _ in range(size):
      i = int(np.argmax(np.where(taken, -np.inf, gain)))
      picks.append(i)
      taken[i] = True
      gain -= 2 * sub[i]
    bins.append(remaining[picks])
    remaining = remaining[~taken]
  return bins


def select_dq(problems: ClassProblem, m: int, cfg, keys) -> SelectionOutput:
  """Dataset quantization: `dq_bins` over the candidates, then uniform picks from each bin.

  The similarity is cfg.similarity: 'gradient' (the release's, `dq_gradient_similarity`;
  features must be the penultimate layer of the classifier that gave probs) or
  'euclidean' (on the features, `dq_euclidean_similarity`). Per-bin quotas are the budget
  split as evenly as possible, the earlier bins taking the remainder; a quota never
  exceeds its bin because bins and quotas split the same way.
  """
  if cfg.similarity not in DQ_SIMILARITIES:  # before any work.
    raise ValueError(f'unknown DQ similarity {cfg.similarity!r}; known: '
                     f'{", ".join(DQ_SIMILARITIES)}')

  def one(p: ClassProblem, rng: np.random.Generator) -> np.ndarray:
    cand = np.flatnonzero(p.candidate)
    similarity = (
        dq_gradient_similarity(p.features[cand], p.probs[cand], p.labels[cand])
        if cfg.similarity == 'gradient' else dq_euclidean_similarity(p.features[cand]))
    bins = dq_bins(similarity, cfg.num_bins)
    quotas = _even_split(m, len(bins))
    return cand[np.concatenate([rng.choice(bin_, q, replace=False)
                                for bin_, q in zip(bins, quotas)])]

  return _per_class(problems, m, keys, one)


def d2c_rank_key(scores: np.ndarray, mode: str, target: float) -> np.ndarray:
  """What D2C sorts ascending to rank images: the score, its negation, or |score - target|."""
  if mode == 'lowest':
    return scores
  if mode == 'highest':
    return -scores
  if mode == 'nearest':
    return np.abs(scores - target)
  raise ValueError(f'unknown D2C mode {mode!r}; known: {", ".join(D2C_MODES)}')


def select_d2c(problems: ClassProblem, m: int, cfg, keys) -> SelectionOutput:
  """D2C's Select phase: interval sampling, then ranking by diffusion difficulty.

  Keeps every `interval`-th candidate in class order (positions 0, k, 2k, ... of the
  candidates), ranks the kept ones by `d2c_rank_key` of ClassProblem.difficulty (stable,
  ties to the lower index) and takes the first m. A class too small to keep m at stride k
  keeps every (n_candidates // m)-th instead, so the quota can always be met.
  """
  del keys  # Deterministic.
  d2c_rank_key(np.zeros(0), cfg.mode, cfg.target)  # Reject a bad mode before any work.

  def one(p: ClassProblem, rng: None) -> np.ndarray:
    del rng
    cand = np.flatnonzero(p.candidate)
    kept = cand[::max(1, min(cfg.interval, len(cand) // m))]
    order = np.argsort(d2c_rank_key(p.difficulty[kept], cfg.mode, cfg.target),
                       kind='stable')
    return kept[order[:m]]

  return _per_class(problems, m, None, one)
