"""The study on the embedded digits: which 10% of the train split trains the better DiT.

    python main.py --config=configs/digits_study.py --workdir=workdir/digits-study
    python main.py --config=configs/digits_study.py:smoke=True --workdir=workdir/study-smoke

The grid: methods random, herding, kcenter, ccs, dq, d2c and gadc, and GADC's five ablations
(no OT term, no moment term, no CE term, kappa = 1, no refinement), each at 10% with seeds
0, 1, 2, plus the full-data reference: 37 cells. Every cell trains the digits DiT of
configs/digits.py on its selection, samples it, evaluates the samples in the evaluation
network's space against the train and the test split, and scores them by CAS.

The cell is calibrated to keep the whole study under 45 minutes on a 2-core CPU (see
`_CELL`); the shared stages are configs/digits.py's.

Arguments (`:name=value,...`): smoke=True: methods random and gadc, seeds 0 and 1, no
ablations, the full reference, at configs/digits.py's smoke sizes (seconds per cell).
"""

import os
import runpy

import ml_collections

from gadc_jax import defaults

_DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits.py')

# The calibrated cell. Measured with benchmarks/study_bench.py on the 2-core CPU while other
# work loaded it (load average 7-10): a cell of 600 steps cost 322 s warm (train 224, sample
# 62, select 22, evaluate 12, CAS 2) and 464-536 s cold (the first of its shapes compiles);
# at the ~5x an idle machine gains, ~65 s a cell. 500 steps keep 37 cells and the shared
# stages near 40 minutes; rerun the benchmark on an idle machine to recalibrate.
_CELL = {'train_steps': 500, 'num_samples': 500, 'sampler_steps': 50}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, smoke=False)
  config = runpy.run_path(_DIGITS)['get_config'](f'smoke={args.smoke}')
  config.job = 'study'
  config.study = defaults.study()
  config.study.methods = ('random', 'herding', 'kcenter', 'ccs', 'dq', 'd2c', 'gadc')
  if args.smoke:
    config.study.methods = ('random', 'gadc')
    config.study.seeds = (0, 1)
    config.study.ablations = ml_collections.ConfigDict()
    config.study.cas.steps = 20
    config.evaluate.kid_subsets = 10
  else:
    config.train.steps = _CELL['train_steps']
    config.sample.num_samples = _CELL['num_samples']
    config.sample.sampler.steps = config.train.sampler.steps = _CELL['sampler_steps']
  return config
