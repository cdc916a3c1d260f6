"""Contracts every selection method of the registry keeps, whatever the method."""

import jax
import numpy as np
import pytest
from scipy.special import log_softmax

from gadc_jax import defaults
from gadc_jax.selection import methods
from gadc_jax.selection import problem as problem_lib


def _class(seed, n, dim=128, classes=10):
  """A class of a few anisotropic clusters with classifier outputs; CE is for label 0."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((4, dim))
  scales = rng.uniform(0.2, 1.0, (4, dim))
  which = rng.integers(0, 4, n)
  x = centres[which] + scales[which] * rng.standard_normal((n, dim))
  log_p = log_softmax(2.0 * rng.standard_normal((n, classes)), axis=1)
  p = np.exp(log_p)
  problem = problem_lib.make_problem(x, p, -log_p[:, 0], -(p * log_p).sum(1), p.max(1),
                                     difficulty=rng.random(n))
  return problem._replace(candidate=rng.random(n) < 0.9)


def _options(name):
  cfg = defaults.method(name)
  if name == 'gadc':
    cfg.epsilon_rel = 0.05  # the features' scale is not a preset encoder's
    cfg.rounds = 5
  return cfg


# GADC compiles a search for each padded size (about a minute of CPU): slow.
@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow) if name == 'gadc' else name
    for name in defaults.METHODS])
def test_a_class_alone_and_in_a_padded_batch_of_sixteen_agree(name):
  """Same indices whether a class is selected alone (unpadded) or as one of 16 classes
  padded to a larger n, given the same key."""
  # Classes 0, 7 and 15 share a size so that their unpadded runs share one compile.
  m, sizes = 3, [24 if b in (0, 7, 15) else 12 + 2 * b for b in range(16)]
  problems = [_class(100 + b, n) for b, n in enumerate(sizes)]
  base = jax.random.key(7)
  keys = jax.vmap(lambda c: jax.random.fold_in(base, c))(np.arange(16))
  select, cfg = methods.get_method(name), _options(name)
  batched = select(problem_lib.stack_problems(problems, n=64), m, cfg, keys)
  for b in (0, 7, 15):
    alone = select(problem_lib.stack_problems([problems[b]]), m, cfg, keys[b:b + 1])
    np.testing.assert_array_equal(batched.indices[b], alone.indices[0], err_msg=f'class {b}')


# GADC's search compiles for a minute on the CPU: slow, as above.
@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow) if name == 'gadc' else name
    for name in defaults.METHODS])
def test_reads_seed_says_whether_the_keys_change_the_subset(name):
  """A study shares one selection over the seeds of a method that reads no seed, so that
  method must give the same subset for any keys; a seeded one must not."""
  problems = problem_lib.stack_problems([_class(200 + b, 40) for b in range(4)])
  select, cfg = methods.get_method(name), _options(name)
  picks = [np.asarray(select(problems, 6, cfg, jax.random.split(jax.random.key(seed), 4))
                      .indices) for seed in (0, 1)]
  assert np.array_equal(*picks) == (not methods.reads_seed(name))
