"""Baselines: the interface every method shares, and each one's defining property."""

import itertools

import jax
import numpy as np
import pytest
import torch

from gadc_jax import defaults
from gadc_jax.selection import baselines
from gadc_jax.selection import methods
from gadc_jax.selection.problem import make_problem, stack_problems, unstack_problem

BASELINES = ('random', 'herding', 'kcenter', 'ccs', 'dq', 'd2c')


def _class(rng, n, d=6, candidate_frac=0.8, ce=None, difficulty=None):
  """A random class; roughly candidate_frac of its images are candidates."""
  probs = rng.dirichlet(np.ones(5), n)
  problem = make_problem(
      rng.normal(size=(n, d)), probs,
      rng.exponential(size=n) if ce is None else ce, rng.random(n), probs.max(axis=1),
      rng.random(n) if difficulty is None else difficulty)
  return problem._replace(candidate=rng.random(n) < candidate_frac)


def _keys(num, seed=0):
  base = jax.random.key(seed)
  return jax.vmap(lambda c: jax.random.fold_in(base, c))(np.arange(num))


def _select(name, problems, m, keys, **overrides):
  select_fn = methods.get_method(name)
  cfg = defaults.method(name)
  cfg.update(overrides)
  return select_fn(problems, m, cfg, keys)


@pytest.fixture(scope='module')
def classes():
  rng = np.random.default_rng(0)
  return [_class(rng, n) for n in (40, 57, 33)]


@pytest.mark.parametrize('name', BASELINES)
def test_distinct_candidates_in_shape(name, classes):
  m = 7
  out = _select(name, stack_problems(classes), m, _keys(3))
  assert out.indices.shape == (3, m) and out.indices.dtype == np.int32
  assert out.objective.shape == (3,) and out.objective.dtype == np.float32
  assert np.all(np.isnan(out.objective))
  # No baseline solves partial OT, so none has an unconverged solve to report.
  assert out.unconverged.dtype == np.int32 and out.unconverged.tolist() == [0, 0, 0]
  for problem, idx in zip(classes, out.indices):
    assert len(set(idx.tolist())) == m
    assert np.all(problem.candidate[idx])


@pytest.mark.parametrize('name', BASELINES)
def test_padding_and_batching_change_nothing(name, classes):
  m, keys = 5, _keys(3)
  batched = _select(name, stack_problems(classes), m, keys).indices
  padded = _select(name, stack_problems(classes, n=80), m, keys).indices
  np.testing.assert_array_equal(padded, batched)
  for b, problem in enumerate(classes):
    alone = _select(name, stack_problems([problem]), m, keys[b:b + 1]).indices
    np.testing.assert_array_equal(alone[0], batched[b])


@pytest.mark.parametrize('name', BASELINES)
def test_too_few_candidates_is_an_error(name, classes):
  with pytest.raises(ValueError, match='fewer than m'):
    _select(name, stack_problems(classes), 31, _keys(3))


def test_registry():
  assert set(BASELINES) < set(defaults.METHODS) and 'gadc' in defaults.METHODS
  with pytest.raises(ValueError, match='known: gadc, random, herding'):
    methods.get_method('nope')


# random ---------------------------------------------------------------------------------


def test_random_is_seeded_and_uniform():
  rng = np.random.default_rng(1)
  problem = _class(rng, 10)._replace(candidate=np.arange(10) >= 2)
  batch = stack_problems([problem] * 2000)
  first = _select('random', batch, 3, _keys(2000)).indices
  np.testing.assert_array_equal(_select('random', batch, 3, _keys(2000)).indices, first)
  assert not np.array_equal(_select('random', batch, 3, _keys(2000, seed=1)).indices, first)
  # Legacy uint32 keys, as jax.random.PRNGKey makes them, work too.
  legacy = jax.random.split(jax.random.PRNGKey(0), 2000)
  assert _select('random', batch, 3, legacy).indices.shape == (2000, 3)
  counts = np.bincount(first.ravel(), minlength=10)
  assert counts[:2].sum() == 0
  # 6000 picks over 8 candidates: 750 each; the binomial sd is about 26.
  assert np.all(np.abs(counts[2:] - 750) < 120), counts


# herding --------------------------------------------------------------------------------


def _mean_error(x, subset, mu):
  return np.linalg.norm(x[list(subset)].mean(axis=0) - mu)


def test_herding_is_the_greedy_mean_matcher():
  rng = np.random.default_rng(2)
  problem = _class(rng, 200, candidate_frac=0.7)
  m = 10
  picks = _select('herding', stack_problems([problem]), m, _keys(1)).indices[0]
  x = problem.features.astype(np.float64)
  mu = x.mean(axis=0)  # Every real image, candidate or not.
  chosen = []
  for t in range(m):
    errors = {c: _mean_error(x, chosen + [c], mu)
              for c in np.flatnonzero(problem.candidate) if c not in chosen}
    best = min(errors.values())
    np.testing.assert_allclose(_mean_error(x, chosen + [picks[t]], mu), best, rtol=1e-5)
    chosen.append(picks[t])
  # Herding's error falls like 1/m, random's like 1/sqrt(m).
  cand = np.flatnonzero(problem.candidate)
  for t in (3, 6, 10):
    random_error = np.mean([_mean_error(x, rng.choice(cand, t, replace=False), mu)
                            for _ in range(200)])
    assert _mean_error(x, picks[:t], mu) < 0.5 * random_error
  assert _mean_error(x, picks, mu) < 0.2 * random_error


# k-center -------------------------------------------------------------------------------


def _covering_radius(x, centers):
  return np.sqrt(((x[:, None] - x[list(centers)][None]) ** 2).sum(-1)).min(axis=1).max()


@pytest.mark.parametrize('seed', range(4))
def test_kcenter_is_farthest_first_and_within_twice_optimal(seed):
  rng = np.random.default_rng(seed)
  problem = _class(rng, 12, d=2, candidate_frac=1.1)
  m = 3
  picks = _select('kcenter', stack_problems([problem]), m, _keys(1)).indices[0]
  x = problem.features.astype(np.float64)
  assert picks[0] == np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1))
  for t in range(1, m):
    nearest = np.linalg.norm(x[:, None] - x[picks[:t]][None], axis=-1).min(axis=1)
    assert picks[t] == np.argmax(nearest)
  optimal = min(_covering_radius(x, s) for s in itertools.combinations(range(12), m))
  assert _covering_radius(x, picks) <= 2 * optimal + 1e-6


# CCS ------------------------------------------------------------------------------------


def _ccs_class(rng):
  """40 images: the 4 hardest (10%) and 36 in four equal-width strata of [0, 1]."""
  strata = [np.array([0.0, 0.1]), np.linspace(0.3, 0.45, 5), np.linspace(0.55, 0.7, 12),
            np.linspace(0.8, 1.0, 17)]
  ce = np.concatenate([5.0 + np.arange(4)] + strata)
  label = np.concatenate([np.full(4, -1)] + [np.full(len(s), k) for k, s in enumerate(strata)])
  order = rng.permutation(len(ce))
  problem = _class(rng, len(ce), ce=ce[order], candidate_frac=1.1)
  return problem, label[order]


# Sizes 2, 5, 12, 17 visited sparsest first, each given min(size, left // strata left):
# m=12: 2 (10 left), 3 (7), 3 (4), 4. m=4: 1 each. m=2: 0, 0, 1 (2 // 2), 1.
@pytest.mark.parametrize('m,expected', [(12, [2, 3, 3, 4]), (4, [1, 1, 1, 1]),
                                        (2, [0, 0, 1, 1])])
def test_ccs_drops_the_hardest_and_fills_strata_sparsest_first(m, expected):
  problem, label = _ccs_class(np.random.default_rng(3))
  out = _select('ccs', stack_problems([problem] * 8), m, _keys(8), num_strata=4)
  for idx in out.indices:
    assert np.all(label[idx] >= 0)
    np.testing.assert_array_equal(np.bincount(label[idx], minlength=4), expected)
  # Within a stratum the draw is random: different keys pick different images.
  assert len({tuple(sorted(idx)) for idx in out.indices}) > 1


def test_ccs_budgets_is_water_filling():
  rng = np.random.default_rng(4)
  for _ in range(50):
    sizes = rng.integers(0, 8, size=rng.integers(1, 10))
    m = int(rng.integers(1, sizes.sum() + 2))
    budgets = baselines.ccs_budgets(sizes, m)
    assert budgets.sum() == min(m, sizes.sum()) and np.all(budgets <= sizes)
    # Water-filling: a stratum short of its full size gets at least every other's share.
    short = budgets < sizes
    if short.any():
      assert budgets[short].min() >= budgets.max() - 1


# DQ -------------------------------------------------------------------------------------


def _graph_cut(sim, ground, subset):
  """GraphCut with lambda = 1: sum_{i in U, j in S} s_ij - sum_{i, j in S} s_ij."""
  subset = list(subset)
  return sim[np.ix_(ground, subset)].sum() - sim[np.ix_(subset, subset)].sum()


def test_dq_bins_are_greedy_graph_cut_partitions():
  x = np.random.default_rng(5).normal(size=(23, 3))
  bins = baselines.dq_bins(baselines.dq_euclidean_similarity(x), 5)
  assert [len(b) for b in bins] == [5, 5, 5, 4, 4]
  np.testing.assert_array_equal(np.sort(np.concatenate(bins)), np.arange(23))
  sq = ((x[:, None] - x[None]) ** 2).sum(-1)
  sim = sq.max() - sq
  ground = np.arange(23)
  for bin_ in bins:
    for t, pick in enumerate(bin_):
      rest = [c for c in ground if c not in bin_[:t]]
      gains = [_graph_cut(sim, ground, list(bin_[:t]) + [c]) - _graph_cut(sim, ground, bin_[:t])
               for c in rest]
      assert pick == rest[int(np.argmax(gains))]
    ground = np.setdiff1d(ground, bin_)


def _release_gradients(logits, features, labels):
  """dq/methods/submodular.py's calc_gradient, ported: autograd of CrossEntropyLoss on the
  softmax of the logits, then [bias grads, bias grads x embedding flattened]."""
  outputs = torch.tensor(logits, requires_grad=True)
  loss = torch.nn.CrossEntropyLoss()(torch.softmax(outputs, dim=1),
                                     torch.tensor(labels)).sum()
  bias = torch.autograd.grad(loss, outputs)[0].numpy()
  weight = bias[:, :, None] * features[:, None, :]
  return np.concatenate([bias, weight.reshape(len(bias), -1)], axis=1)


def _release_cossim(v1, v2):
  """dq/methods/methods_utils/cossim.py's cossim_np, ported."""
  res = (v1 @ v2.T) / (np.linalg.norm(v1, axis=1)[:, None] * np.linalg.norm(v2, axis=1))
  res[np.isneginf(res)] = 0.0
  return 0.5 + 0.5 * res


def _release_bins(sim, sizes):
  """quantize_sample.py's bins: per bin, GraphCut (lambda 1) maximised by NaiveGreedy over
  the images not yet in a bin (methods_utils/submodular_function.py, _optimizer.py)."""
  avail = np.arange(len(sim))
  bins = []
  for size in sizes:
    s = sim[np.ix_(avail, avail)]
    col_sums = s.sum(axis=0)
    selected = np.zeros(len(avail), bool)
    greedy_gain = np.zeros(len(avail))
    for _ in range(size):
      greedy_gain[~selected] = (-2.0 * s[np.ix_(selected, ~selected)].sum(axis=0)
                                + col_sums[~selected])
      pick = greedy_gain.argmax()
      selected[pick] = True
      greedy_gain[pick] = -np.inf
    bins.append(avail[selected])
    avail = avail[~selected]
  return bins


def test_dq_gradient_bins_match_the_release():
  rng = np.random.default_rng(11)
  n, d, k = 30, 8, 6
  features = np.abs(rng.normal(size=(n, d)))  # post-ReLU pooled features.
  logits = 3.0 * rng.normal(size=(n, k))
  labels = np.full(n, 2)
  labels[:4] = 4  # the similarity uses each image's own label.
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  grads = _release_gradients(logits, features, labels)
  expected = _release_cossim(grads, grads)
  got = baselines.dq_gradient_similarity(features, probs, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
  # Not p - onehot: the release's extra softmax changes the gradients' directions.
  naive = probs - np.eye(k)[labels]
  naive = np.concatenate([naive, (naive[:, :, None] * features[:, None]).reshape(n, -1)], 1)
  assert np.abs(_release_cossim(naive, naive) - expected).max() > 1e-2
  bins = baselines.dq_bins(got, 4)
  sizes = [len(b) for b in bins]
  assert sizes == [8, 8, 7, 7]
  for ours, theirs in zip(bins, _release_bins(expected, sizes)):
    np.testing.assert_array_equal(np.sort(ours), theirs)


def test_dq_zero_gradient_is_unrelated_to_everything():
  features = np.ones((3, 2))
  probs = np.array([[1.0, 0.0], [0.7, 0.3], [0.2, 0.8]])  # image 0: one-hot on its label.
  sim = baselines.dq_gradient_similarity(features, probs, np.zeros(3, int))
  np.testing.assert_array_equal(sim[0], 0.5)
  assert np.all(np.isfinite(sim))


def test_dq_samples_every_bin():
  rng = np.random.default_rng(6)
  problem = _class(rng, 23, d=3, candidate_frac=1.1)
  bins = baselines.dq_bins(
      baselines.dq_gradient_similarity(problem.features, problem.probs, problem.labels), 5)
  which = np.zeros(23, int)
  for b, bin_ in enumerate(bins):
    which[bin_] = b
  out = _select('dq', stack_problems([problem] * 6), 11, _keys(6), num_bins=5)
  for idx in out.indices:
    np.testing.assert_array_equal(np.bincount(which[idx], minlength=5), [3, 2, 2, 2, 2])
  assert len({tuple(sorted(idx)) for idx in out.indices}) > 1
  euclidean = _select('dq', stack_problems([problem]), 11, _keys(1), num_bins=5,
                      similarity='euclidean')
  assert not np.array_equal(np.sort(euclidean.indices[0]), np.sort(out.indices[0]))


# D2C ------------------------------------------------------------------------------------


@pytest.mark.parametrize('mode', baselines.D2C_MODES)
def test_d2c_interval_then_ranking(mode):
  rng = np.random.default_rng(7)
  problem = _class(rng, 50, candidate_frac=1.1)
  idx = _select('d2c', stack_problems([problem]), 6, _keys(1), mode=mode).indices[0]
  assert np.all(idx % 4 == 0)
  rank = baselines.d2c_rank_key(problem.difficulty, mode, 0.40)
  expected_rank = {'lowest': problem.difficulty, 'highest': -problem.difficulty,
                   'nearest': np.abs(problem.difficulty - 0.40)}[mode]
  np.testing.assert_array_equal(rank, expected_rank)
  others = np.setdiff1d(np.arange(0, 50, 4), idx)
  assert rank[idx].max() <= rank[others].min()


def test_d2c_rejects_an_unknown_mode(classes):
  with pytest.raises(ValueError, match='unknown D2C mode'):
    _select('d2c', stack_problems(classes), 3, _keys(3), mode='median')


def test_d2c_strides_over_candidates():
  rng = np.random.default_rng(8)
  problem = _class(rng, 60)
  idx = _select('d2c', stack_problems([problem]), 5, _keys(1)).indices[0]
  kept = np.flatnonzero(problem.candidate)[::4]
  assert set(idx.tolist()) <= set(kept.tolist())
  # A class too small for stride 4 keeps every (candidates // m)-th so that m fit.
  small = unstack_problem(stack_problems([problem]), 0)._replace(candidate=np.arange(60) < 12)
  idx = _select('d2c', stack_problems([small]), 6, _keys(1)).indices[0]
  np.testing.assert_array_equal(np.sort(idx), np.arange(0, 12, 2))


def test_dq_similarity_is_checked():
  cfg = defaults.method('dq')
  methods.check_options('dq', cfg, 'config.select.dq')
  cfg.similarity = 'cosine'
  with pytest.raises(ValueError, match="config.select.dq.similarity must be one of gradient, "
                     "euclidean, got 'cosine'"):
    methods.check_options('dq', cfg, 'config.select.dq')
