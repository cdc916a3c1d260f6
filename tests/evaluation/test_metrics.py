"""FID / sFID / KID / IS / precision-recall against scipy, ports of the published formulas,
closed forms and brute force."""

import numpy as np
import pytest
import scipy.linalg

from gadc_jax.evaluation import metrics


def _random_stats(rng, dim, n):
  x = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) + rng.standard_normal(dim)
  return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _scipy_frechet(mu1, sigma1, mu2, sigma2):
  """ADM / pytorch-fid's formula, with scipy.linalg.sqrtm."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize('dim', [1, 16, 64])
def test_frechet_distance_equals_scipy_sqrtm(dim):
  rng = np.random.default_rng(dim)
  stats1, stats2 = _random_stats(rng, dim, 4 * dim + 10), _random_stats(rng, dim, 3 * dim + 10)
  expected = _scipy_frechet(*stats1, *stats2)
  np.testing.assert_allclose(metrics.frechet_distance(*stats1, *stats2), expected, rtol=1e-8)


def test_frechet_distance_closed_form_for_diagonal_covariances_also_singular():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
  s1, s2 = rng.uniform(0.1, 3.0, 32), rng.uniform(0.1, 3.0, 32)
  s1[:5] = 0.0  # rank-deficient: sqrtm-based code needs an eps offset here, ours does not.
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_with_fewer_samples_than_dimensions_matches_scipy():
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((20, 48)), rng.standard_normal((30, 48)) + 0.5
  expected = _scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
  np.testing.assert_allclose(metrics.fid_from_features(a, b), expected, rtol=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(2).standard_normal((300, 24)).astype(np.float32)
  assert abs(metrics.fid_from_features(x, x)) < 1e-6


def test_running_stats_over_batches_and_merged_equal_one_shot():
  rng = np.random.default_rng(3)
  x = (rng.standard_normal((1000, 20)) * 0.1 + 50.0).astype(np.float32)  # a large offset
  mu, sigma = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
  got_mu, got_sigma = metrics.feature_statistics(x, batch_size=64)
  np.testing.assert_allclose(got_mu, mu, rtol=1e-10)
  np.testing.assert_allclose(got_sigma, sigma, rtol=1e-9, atol=1e-12)
  # Two hosts, each with its own shift, merged.
  host0 = metrics.RunningStats.empty(20).update(x[:300]).update(x[300:450])
  host1 = metrics.RunningStats.empty(20).update(x[450:])
  merged_mu, merged_sigma = host0.merge(host1).finalize()
  np.testing.assert_allclose(merged_mu, mu, rtol=1e-10)
  np.testing.assert_allclose(merged_sigma, sigma, rtol=1e-9, atol=1e-12)


def test_sfid_reads_the_spatial_features_only():
  rng = np.random.default_rng(4)
  pooled_a, pooled_b = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
  spatial_a, spatial_b = rng.standard_normal((200, 28)), rng.standard_normal((200, 28))
  fid = metrics.fid_from_features(pooled_a, pooled_b)
  sfid = metrics.sfid_from_features(spatial_a, spatial_b)
  shifted = spatial_b + 2.0  # only the spatial features change
  assert metrics.fid_from_features(pooled_a, pooled_b) == fid
  assert metrics.sfid_from_features(spatial_a, shifted) > sfid + 28 * 3.0


def test_reference_statistics_reads_adm_keys(tmp_path):
  rng = np.random.default_rng(5)
  path = str(tmp_path / 'ref.npz')
  np.savez(path, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=rng.standard_normal(3),
           sigma=np.eye(3), mu_s=rng.standard_normal(5), sigma_s=2 * np.eye(5))
  stats = metrics.reference_statistics(path)
  assert sorted(stats) == ['fid', 'sfid']
  assert stats['fid'][1].shape == (3, 3) and stats['sfid'][0].shape == (5,)
  np.savez(path, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
  assert not metrics.reference_statistics(path)


def test_inception_score_extremes():
  k, splits = 10, 10
  one_hot = 1e4 * np.eye(k)[np.arange(k * splits * 5) % k]  # every split: each class equally
  mean, std = metrics.inception_score(one_hot, splits=splits)
  assert abs(mean - k) < 1e-4 and std < 1e-4
  mean, std = metrics.inception_score(np.zeros((100, k)), splits=splits)
  assert abs(mean - 1.0) < 1e-4 and std < 1e-4


def _adm_inception_score(pool, weights, split_size):
  """ADM's evaluator (after openai/improved-gan): softmax(pool_3 . W) with W the weights of
  the graph's softmax/logits/MatMul, no bias; the mean over contiguous splits of
  exp(mean_x KL(p(y|x) || p(y)))."""
  logits = pool @ weights
  exp = np.exp(logits - logits.max(axis=1, keepdims=True))
  preds = exp / exp.sum(axis=1, keepdims=True)
  scores = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores)


def test_inception_score_of_pool_features_times_weights_equals_adms():
  # The FID network's logits are pool_3 . W (tests/encoders/test_inception.py).
  rng = np.random.default_rng(8)
  pool = rng.uniform(0, 2, (60, 32))  # pool_3 is post-ReLU, non-negative
  weights = rng.standard_normal((32, 20))
  mean, _ = metrics.inception_score(pool @ weights, splits=3)
  expected = _adm_inception_score(pool, weights, split_size=20)
  assert expected > 2.0  # a case that tests something
  np.testing.assert_allclose(mean, expected, rtol=1e-10)


def _unbiased_polynomial_mmd2(x, y):
  """torch-fidelity's kid (after Binkowski et al.'s MMD-GAN compute_scores): the unbiased
  MMD^2 with k(u, v) = (u.v / d + 1)^3, within-set sums without the diagonal."""
  m, d = x.shape
  k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
  off_diagonal = ~np.eye(m, dtype=bool)
  return (k_xx[off_diagonal].sum() + k_yy[off_diagonal].sum()) / (m * (m - 1)) \
      - 2 * k_xy.sum() / (m * m)


def test_kid_with_whole_sets_equals_the_unbiased_mmd():
  # subset_size caps at the set size: every draw is the whole sets, reordered.
  rng = np.random.default_rng(9)
  x = rng.standard_normal((30, 6)).astype(np.float32)
  y = (rng.standard_normal((30, 6)) * 1.5 + 0.3).astype(np.float32)
  mean, std = metrics.kid_from_features(x, y, subset_size=1000, num_subsets=3)
  expected = _unbiased_polynomial_mmd2(x.astype(np.float64), y.astype(np.float64))
  np.testing.assert_allclose(mean, expected, rtol=1e-10)
  assert std < 1e-12


def _uniform_polynomial_mmd2(shift, d):
  """Closed form of MMD^2 of U[0, 1]^d and U[shift, 1 + shift]^d with k = (u.v / d + 1)^3.

  For u, v independent with iid coordinates, s = u.v is a sum of d iid products z with
  moments mu_j = E u_i^j E v_i^j, so E s = d mu_1, E s^2 = d mu_2 + d(d-1) mu_1^2 and
  E s^3 = d mu_3 + 3 d(d-1) mu_2 mu_1 + d(d-1)(d-2) mu_1^3.
  """
  def moments(a, b):  # E x, E x^2, E x^3 of U[a, b]
    return np.array([(a + b) / 2, (a * a + a * b + b * b) / 3, (a + b) * (a * a + b * b) / 4])

  def expected_kernel(p, q):
    mu1, mu2, mu3 = p * q
    s1 = d * mu1
    s2 = d * mu2 + d * (d - 1) * mu1 ** 2
    s3 = d * mu3 + 3 * d * (d - 1) * mu2 * mu1 + d * (d - 1) * (d - 2) * mu1 ** 3
    return s3 / d ** 3 + 3 * s2 / d ** 2 + 3 * s1 / d + 1

  x, y = moments(0.0, 1.0), moments(shift, 1.0 + shift)
  return expected_kernel(x, x) + expected_kernel(y, y) - 2 * expected_kernel(x, y)


def test_kid_is_near_zero_for_one_distribution_and_the_closed_form_for_a_shift():
  rng = np.random.default_rng(10)
  d, shift = 8, 0.3
  x, same = rng.uniform(0, 1, (2, 1000, d))
  shifted = rng.uniform(shift, 1 + shift, (1000, d))
  kid_same, _ = metrics.kid_from_features(x, same, subset_size=500, num_subsets=5)
  kid_shift, std = metrics.kid_from_features(x, shifted, subset_size=500, num_subsets=5)
  expected = _uniform_polynomial_mmd2(shift, d)  # 0.884
  assert abs(kid_same) < 0.01 * expected
  assert abs(kid_shift - expected) < 0.15 * expected and std > 0


def test_kid_is_seeded():
  rng = np.random.default_rng(11)
  x, y = rng.standard_normal((2, 50, 3))
  assert metrics.kid_from_features(x, y, 20, 4, seed=1) == metrics.kid_from_features(
      x, y, 20, 4, seed=1)
  assert metrics.kid_from_features(x, y, 20, 4, seed=1) != metrics.kid_from_features(
      x, y, 20, 4, seed=2)


def _brute_force_precision_recall(real, fake, k):
  d = lambda x, y: np.sum((x[:, None] - y[None]) ** 2, axis=-1)
  real_radii = np.sort(d(real, real), axis=1)[:, k]
  fake_radii = np.sort(d(fake, fake), axis=1)[:, k]
  cross = d(fake, real)
  return (np.mean(np.any(cross <= real_radii[None, :], axis=1)),
          np.mean(np.any(cross <= fake_radii[:, None], axis=0)))


@pytest.mark.parametrize('n_real,n_fake,block_size', [(90, 70, 4096), (90, 37, 16)])
def test_precision_recall_equals_brute_force(n_real, n_fake, block_size):
  rng = np.random.default_rng(6)
  real = rng.standard_normal((n_real, 6)).astype(np.float32)
  fake = (rng.standard_normal((n_fake, 6)) * 1.3 + 0.4).astype(np.float32)
  expected = _brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64), 3)
  got = metrics.precision_recall(real, fake, k=3, block_size=block_size)
  np.testing.assert_allclose(got, expected)
  assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0  # a case that tests something


def test_precision_recall_of_identical_and_far_apart_sets():
  x = np.random.default_rng(7).standard_normal((50, 8)).astype(np.float32)
  assert metrics.precision_recall(x, x) == (1.0, 1.0)
  assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_bad_inputs_raise_clear_errors():
  x = np.zeros((10, 4))
  with pytest.raises(ValueError, match='widths differ: 4 vs 5'):
    metrics.fid_from_features(x, np.zeros((10, 5)))
  with pytest.raises(ValueError, match='widths differ'):
    metrics.precision_recall(x, np.zeros((10, 5)))
  with pytest.raises(ValueError, match='3 samples; at least 4'):
    metrics.precision_recall(x, np.zeros((3, 4)), k=3)
  with pytest.raises(ValueError, match='at least 2'):
    metrics.fid_from_features(x, np.zeros((1, 4)))
  with pytest.raises(ValueError, match='NaN or inf'):
    metrics.fid_from_features(x, np.full((5, 4), np.nan))
  with pytest.raises(ValueError, match=r'expected features \[N, D\]'):
    metrics.inception_score(np.zeros(10))
  with pytest.raises(ValueError, match='KID needs subset_size >= 2'):
    metrics.kid_from_features(x, x, subset_size=1)
  with pytest.raises(ValueError, match='widths differ'):
    metrics.kid_from_features(x, np.zeros((10, 5)))
  with pytest.raises(ValueError, match='statistics do not match'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
