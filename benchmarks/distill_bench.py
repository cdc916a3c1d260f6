"""What the OT guidance costs on top of IGD's: sampling time of IGD alone vs IGD + OTG.

    python benchmarks/distill_bench.py [--steps 50] [--window 30,45] [--classes 10]
        [--ipc 10] [--num_real 100] [--sinkhorn_iterations 20] [--repeats 5] [--depth 4]
        [--hidden 128]

The digits DiT (8x8x1 pixels; depth / hidden as configs/digits.py) and a digits CNN
surrogate with random parameters, random "real" images; one call makes the last sample of
an IPC-sized set for every class at once (so the OT set and the deviation memory are full).
Both samplers are compiled first, then timed alternately --repeats times; the median of each
and their ratio are reported (the target: OT guidance costs at most 10% extra; the paper
says < 1%). It runs on whatever `jax.devices()` offers. The last printed line is one JSON
object.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Run from a checkout without installing: the repository root holds gadc_jax.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from gadc_jax import defaults
from gadc_jax import encoders
from gadc_jax import generator
from gadc_jax import networks
from gadc_jax.distill import igd
from gadc_jax.distill import sampler

SHAPE = (8, 8, 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--window', default='30,45', help='guided steps start,end')
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--ipc', type=int, default=10)
  parser.add_argument('--num_real', type=int, default=100)
  parser.add_argument('--sinkhorn_iterations', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--depth', type=int, default=4)
  parser.add_argument('--hidden', type=int, default=128)
  args = parser.parse_args()
  window = tuple(int(v) for v in args.window.split(','))
  print(f'devices: {jax.devices()}')

  train_cfg = defaults.train()
  train_cfg.model_overrides = ml_collections.ConfigDict(
      {'depth': args.depth, 'hidden': args.hidden, 'heads': 4})
  model = generator.build_model(train_cfg, args.classes)
  params = generator.init_params(model, jax.random.PRNGKey(0), SHAPE)
  surrogate = encoders.build('digits_cnn', args.classes, width=32)
  net_params = networks.init_params(surrogate, 0, SHAPE)
  net_spec = (0, False)
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.uniform(-1, 1, (args.classes, args.num_real) + SHAPE), jnp.float32)
  logits_fn = sampler.surrogate_logits_fn(surrogate, net_spec)
  class_gradient = jax.jit(lambda images, labels: igd.loss_gradient(logits_fn, net_params,
                                                                   images, labels))
  real_grads = jnp.stack([class_gradient(real[c], jnp.full((args.num_real,), c))
                          for c in range(args.classes)])
  context = sampler.GuidanceContext(
      scales={t: jnp.float32(0.1) for t in sampler.TERMS},
      earlier=jnp.asarray(rng.uniform(-1, 1, (args.classes, args.ipc) + SHAPE), jnp.float32),
      count=jnp.int32(args.ipc - 1), real=real.reshape(args.classes, args.num_real, -1),
      surrogate_params=(net_params,), real_gradients=(real_grads,))
  labels = jnp.arange(args.classes, dtype=jnp.int32)
  common = dict(model=model, method='ddpm', steps=args.steps, cfg_scale=4.0,
                num_guided_channels=1, num_classes=args.classes, pixel=True)

  def make(terms):
    spec = sampler.GuidanceSpec(terms=terms, window=window,
                                sinkhorn_iterations=args.sinkhorn_iterations,
                                surrogates=((surrogate, net_spec),))
    return lambda key: jax.block_until_ready(
        sampler.sample_next(params, labels, key, context, spec=spec, **common))

  runs = {'igd': make(('influence', 'deviation')), 'igd+otg': make(sampler.TERMS)}
  compile_s, times = {}, {name: [] for name in runs}
  for name, fn in runs.items():
    start = time.perf_counter()
    fn(jax.random.PRNGKey(0))
    compile_s[name] = time.perf_counter() - start
  for r in range(args.repeats):
    for name, fn in runs.items():
      start = time.perf_counter()
      fn(jax.random.PRNGKey(r + 1))
      times[name].append(time.perf_counter() - start)
  igd_s, otg_s = (statistics.median(times[name]) for name in runs)
  record = {'benchmark': 'distill', 'device': str(jax.devices()[0]), 'steps': args.steps,
            'window': list(window), 'classes': args.classes, 'ipc': args.ipc,
            'num_real': args.num_real, 'sinkhorn_iterations': args.sinkhorn_iterations,
            'repeats': args.repeats, 'compile_s': compile_s, 'igd_s': igd_s,
            'igd_otg_s': otg_s, 'ratio': otg_s / igd_s}
  print(f'IGD {igd_s:.3f} s, IGD + OTG {otg_s:.3f} s per call: OT guidance costs '
        f'{100 * (otg_s / igd_s - 1):+.1f}%')
  print(json.dumps(record))


if __name__ == '__main__':
  main()
