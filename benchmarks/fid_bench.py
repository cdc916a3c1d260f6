"""Speed of the metrics at ImageNet-evaluation sizes on this machine.

    python benchmarks/fid_bench.py [--fid_n=50000] [--pr_n=10000] [--dim=2048]

Row 1: FID between two sets of random float32 features, statistics included (ADM's setting:
50,000 samples in Inception's 2048-d pool_3 space). Row 2: precision and recall between two
sets of 10,000 (ADM's reference batch size). The last line is one JSON object with the figures.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gadc_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top

_FID_N = flags.DEFINE_integer('fid_n', 50_000, 'samples per set for FID')
_PR_N = flags.DEFINE_integer('pr_n', 10_000, 'samples per set for precision / recall')
_DIM = flags.DEFINE_integer('dim', 2048, 'feature width')


def _features(seed: int, n: int, dim: int, offset: float) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, dim), np.float32) + offset


def _timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def main(argv):
  del argv
  a, b = _features(0, _FID_N.value, _DIM.value, 0.0), _features(1, _FID_N.value, _DIM.value, 0.1)
  fid, fid_s = _timed(lambda: metrics.fid_from_features(a, b))
  print(f'fid        {_FID_N.value} x {_DIM.value} per set: {fid_s:7.2f} s  (fid {fid:.4f})')
  real, fake = a[:_PR_N.value], b[:_PR_N.value]
  (precision, recall), pr_s = _timed(lambda: metrics.precision_recall(real, fake))
  print(f'prec/rec   {_PR_N.value} x {_DIM.value} per set: {pr_s:7.2f} s  '
        f'(precision {precision:.4f}, recall {recall:.4f}; includes compilation)')
  print(json.dumps({
      'device': jax.devices()[0].device_kind, 'cpu_count': os.cpu_count(), 'dim': _DIM.value,
      'fid_n': _FID_N.value, 'fid_seconds': round(fid_s, 2), 'fid': fid,
      'pr_n': _PR_N.value, 'pr_seconds': round(pr_s, 2),
      'precision': precision, 'recall': recall,
  }))


if __name__ == '__main__':
  app.run(main)
