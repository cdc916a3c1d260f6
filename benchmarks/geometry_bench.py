"""Selection methods on classes whose true distribution is known: no encoder, no diffusion.

    python benchmarks/geometry_bench.py [--dims 64,2048] [--budgets 10,30] [--classes 2]
        [--modes 4] [--pool 300] [--outlier_fraction 0.05] [--outlier_scale 3]
        [--reference 500] [--methods gadc,random,herding,kcenter,ccs,dq,d2c] [--seed 0]
        [--out geometry_bench.png]

Each class is a mixture of --modes isotropic unit Gaussians with unequal weights (2^-k,
normalised: the heaviest mode holds about half the mass, the lightest a few percent), its
centres drawn N(0, I) in D dimensions, so that modes lie as far apart as sqrt(2) times their
own spread in any D. A class's pool of --pool points is that mixture plus a --outlier_fraction
of outliers drawn N(0, outlier_scale^2 I), far from every mode, shuffled. Every method of the
selection registry picks m points per class from the pool; the subset is then measured
(gadc_jax.evaluation.geometry) against a fresh --reference-point sample of the clean mixture:
exact W2, MMD, modes hit (unweighted and by weight) and outliers picked, averaged over classes.
The `true-sample` row is m fresh points of the mixture itself, what an ideal draw achieves.

No classifier or diffusion model exists here, so the methods' inputs are stand-ins from the
known distributions: class probabilities are the Bayes posterior of the clean class mixtures
(equal priors), CE and entropy follow from it (GADC, CCS); D2C's difficulty is the rank of the
true negative log-density within the class, in [0, 1], so that its target (0.40) means a
quantile. GADC uses epsilon_rel 0.05 (the presets' absolute epsilon assumes an encoder's
scale). Seconds are wall time of the batched select call, compilation included.

It prints a table, writes a plot (W2 and outliers against m, one column per D) to --out and
ends with one JSON line.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import pyplot as plt

# Run from a checkout without installing: the repository root holds gadc_jax.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gadc_jax import defaults
from gadc_jax.evaluation import geometry
from gadc_jax.selection import methods
from gadc_jax.selection import problem as problem_lib

STAND_INS = ('probs/ce/entropy: Bayes posterior of the clean class mixtures (equal priors); '
             'd2c difficulty: within-class rank of the true -log density, in [0, 1]')
TRUE_SAMPLE = 'true-sample'


def class_mixture(key, modes: int, dim: int) -> geometry.GaussianMixture:
  """Unit modes with centres N(0, I) and weights 2^-k, normalised."""
  weights = 0.5 ** jnp.arange(modes, dtype=jnp.float32)
  return geometry.GaussianMixture(means=jax.random.normal(key, (modes, dim)),
                                  scales=jnp.ones(modes), weights=weights / weights.sum())


def class_pool(key, mixture, size: int, outlier_fraction: float, outlier_scale: float):
  """(points [size, D], mode labels [size]) of the mixture plus outliers, shuffled."""
  mix_key, out_key, perm_key = jax.random.split(key, 3)
  outliers = round(outlier_fraction * size)
  points, modes = geometry.sample(mix_key, mixture, size - outliers)
  far = outlier_scale * jax.random.normal(out_key, (outliers, points.shape[1]))
  order = jax.random.permutation(perm_key, size)
  return (jnp.concatenate([points, far])[order],
          jnp.concatenate([modes, jnp.full(outliers, geometry.OUTLIER, jnp.int32)])[order])


def problems_of(pools, mixtures) -> problem_lib.ClassProblem:
  """The batched selection problems of the pools, with the stand-ins of the docstring."""
  out = []
  for label, (points, _) in enumerate(pools):
    log_p = jnp.stack([geometry.log_density(mix, points) for mix in mixtures], axis=1)
    log_post = np.asarray(jax.nn.log_softmax(log_p, axis=1), np.float64)
    post = np.exp(log_post)
    nll = -np.asarray(log_p[:, label])
    difficulty = np.argsort(np.argsort(nll, kind='stable')) / max(len(nll) - 1, 1)
    out.append(problem_lib.make_problem(
        np.asarray(points), post, -log_post[:, label], -(post * log_post).sum(1),
        post.max(1), difficulty))
  return problem_lib.stack_problems(out)


def method_config(name: str):
  cfg = defaults.method(name)
  if name == 'gadc':
    cfg.epsilon_rel = 0.05
  return cfg


def run_dim(args, dim: int, key):
  """Yields the result rows (means over classes) of every method and budget at one D."""
  mix_keys, pool_keys, ref_keys, true_keys, select_keys = jax.random.split(key, 5)
  mixtures = [class_mixture(k, args.modes, dim)
              for k in jax.random.split(mix_keys, args.classes)]
  pools = [class_pool(k, mix, args.pool, args.outlier_fraction, args.outlier_scale)
           for k, mix in zip(jax.random.split(pool_keys, args.classes), mixtures)]
  refs = [geometry.reference(geometry.sample(k, mix, args.reference)[0])
          for k, mix in zip(jax.random.split(ref_keys, args.classes), mixtures)]
  problems = problems_of(pools, mixtures)
  keys = jax.random.split(select_keys, args.classes)
  for m in args.budgets:
    for name in [TRUE_SAMPLE] + args.methods:
      start = time.perf_counter()
      if name == TRUE_SAMPLE:
        subsets = [geometry.sample(k, mix, m)
                   for k, mix in zip(jax.random.split(jax.random.fold_in(true_keys, m),
                                                      args.classes), mixtures)]
      else:
        # np.asarray waits for the result: the time is the whole selection.
        indices = np.asarray(
            methods.get_method(name)(problems, m, method_config(name), keys).indices)
        subsets = [(points[idx], modes[idx]) for (points, modes), idx in zip(pools, indices)]
      seconds = time.perf_counter() - start
      per_class = [geometry.subset_geometry(points, modes, mix, ref)
                   for (points, modes), mix, ref in zip(subsets, mixtures, refs)]
      row = {k: float(np.mean([c[k] for c in per_class])) for k in per_class[0]}
      yield {'dim': dim, 'method': name, 'm': m, **row, 'seconds': seconds}


def plot(rows, dims, path: str) -> None:
  fig, axes = plt.subplots(2, len(dims), figsize=(4.5 * len(dims), 7), squeeze=False)
  for col, dim in enumerate(dims):
    for name in dict.fromkeys(r['method'] for r in rows):
      mine = [r for r in rows if r['dim'] == dim and r['method'] == name]
      style = '--' if name == TRUE_SAMPLE else '-'
      for row_i, metric in enumerate(('w2', 'outliers')):
        axes[row_i, col].plot([r['m'] for r in mine], [r[metric] for r in mine], style,
                              marker='o', label=name)
    axes[0, col].set_title(f'D = {dim}')
    axes[0, col].set_ylabel('W2 to the true distribution')
    axes[1, col].set_ylabel('outliers picked (per class)')
    axes[1, col].set_xlabel('m (images per class)')
  axes[0, 0].legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dims', default='64,2048')
  parser.add_argument('--budgets', default='10,30')
  parser.add_argument('--classes', type=int, default=2)
  parser.add_argument('--modes', type=int, default=4)
  parser.add_argument('--pool', type=int, default=300, help='points per class to select from')
  parser.add_argument('--outlier_fraction', type=float, default=0.05)
  parser.add_argument('--outlier_scale', type=float, default=3.0)
  parser.add_argument('--reference', type=int, default=500,
                      help='fresh points of each true class distribution to measure against')
  parser.add_argument('--methods', default=','.join(defaults.METHODS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='geometry_bench.png', help='the plot (PNG)')
  args = parser.parse_args()
  args.dims = [int(d) for d in args.dims.split(',')]
  args.budgets = [int(b) for b in args.budgets.split(',')]
  args.methods = args.methods.split(',')
  for name in args.methods:
    methods.get_method(name)  # Unknown names fail before any work.
  if args.classes < 2:
    raise SystemExit('error: --classes must be at least 2 (the posterior stand-in needs them)')

  print(f'devices: {jax.devices()}')
  print(f'stand-ins: {STAND_INS}')
  outliers = round(args.outlier_fraction * args.pool)
  print(f'{args.classes} classes of {args.pool} points ({outliers} outliers each), '
        f'{args.modes} modes; measured against {args.reference} fresh points per class; '
        'means over classes')
  print(f'{"D":>5s} {"method":12s} {"m":>4s} {"W2":>8s} {"MMD":>7s} {"modes":>6s} '
        f'{"weight":>6s} {"outl.":>5s} {"s":>7s}')
  rows = []
  for dim in args.dims:
    for r in run_dim(args, dim, jax.random.fold_in(jax.random.key(args.seed), dim)):
      print(f'{r["dim"]:5d} {r["method"]:12s} {r["m"]:4d} {r["w2"]:8.3f} {r["mmd"]:7.4f} '
            f'{r["modes_hit"]:6.2f} {r["weight_hit"]:6.3f} {r["outliers"]:5.1f} '
            f'{r["seconds"]:7.2f}', flush=True)
      rows.append(r)
  plot(rows, args.dims, args.out)
  print(f'plot: {args.out}')
  print(json.dumps({
      'benchmark': 'geometry', 'device': str(jax.devices()[0]), 'dims': args.dims,
      'budgets': args.budgets, 'classes': args.classes, 'modes': args.modes,
      'pool': args.pool, 'outliers_per_class': outliers, 'reference': args.reference,
      'stand_ins': STAND_INS, 'plot': os.path.abspath(args.out),
      'results': [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                  for r in rows]}))


if __name__ == '__main__':
  main()
