"""LIA: the teacher count follows IPC; soft labels are the teachers' mean softmax."""

import numpy as np
import pytest
from scipy import special

from gadc_jax import networks
from gadc_jax.data import input_pipeline
from gadc_jax.distill import soft_labels

_MAP = {'1': 1, '10': 2, '50': 4}


@pytest.mark.parametrize('ipc,expected', [(1, 1), (5, 1), (10, 2), (49, 2), (50, 4), (100, 4)])
def test_num_teachers_takes_the_largest_ipc_below(ipc, expected):
  assert soft_labels.num_teachers(_MAP, ipc) == expected


def test_choose_teachers_takes_the_first_of_the_pool():
  pool = ('a', 'b', 'c', 'd')
  assert soft_labels.choose_teachers(pool, _MAP, 10) == ('a', 'b')
  assert soft_labels.choose_teachers(pool, _MAP, 50, fixed=1) == ('a',)


def test_pool_smaller_than_the_map_asks_is_one_line_error():
  with pytest.raises(ValueError, match=r'IPC 50 asks for 4 teachers but config.lia.pool has '
                     r'only 2 \(a, b\)') as e:
    soft_labels.choose_teachers(('a', 'b'), _MAP, 50)
  assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='no entry for IPC 0'):
    soft_labels.num_teachers(_MAP, 0)


def test_mean_softmax_matches_scipy():
  logits = np.random.default_rng(0).normal(0, 3, (3, 5, 7)).astype(np.float32)
  expected = special.softmax(logits.astype(np.float64) / 2.5, axis=-1).mean(0)
  np.testing.assert_allclose(soft_labels.mean_softmax(logits, 2.5), expected, rtol=1e-5)


def test_labeler_averages_the_teachers_forward(digits_workdir):
  config, workdir = digits_workdir
  images = input_pipeline.load_split_arrays(config.data, 'test')['image'][:20]
  label, variables = soft_labels.make_labeler(config, workdir, ('selection', 'evaluation'), 1.5)
  probs = []
  for name in ('selection', 'evaluation'):
    module, params, _ = networks.load_network(config, workdir, name)
    logits = networks.make_forward(module, params, config.networks[name], 32)(images)[1]
    probs.append(special.softmax(logits.astype(np.float64) / 1.5, axis=-1))
  np.testing.assert_allclose(label(variables, images), np.mean(probs, 0), rtol=1e-4,
                             atol=1e-6)
