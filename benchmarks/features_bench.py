"""Feature-extraction speed: images per second of the FID InceptionV3 at 299 x 299.

    python benchmarks/features_bench.py [--batch 32] [--iters 5] [--size 299]
        [--dtypes float32,bfloat16]

Runs on whatever `jax.devices()` offers (the GPU when there is one), jitted, random weights
(speed does not depend on them), compile time excluded: one warm-up call per dtype, then
`--iters` timed calls. Prints a table, and as its last line one JSON object. A --size other
than 299 (down to 75) is only for a quick check that the benchmark runs.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Run from a checkout without installing: the repository root holds gadc_jax.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gadc_jax.encoders import inception  # pylint: disable=g-import-not-at-top,wrong-import-position


def random_variables(model, image: jax.Array, seed: int = 1):
  """Random weights of `model`'s shapes, drawn by numpy: He-scaled kernels (activations keep
  their scale through the ReLUs, far from denormals), identity BatchNorms. Compiling
  jax.jit(model.init) instead would take most of a short run."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', '')
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), image)
  return jax.device_put(jax.tree_util.tree_map_with_path(fill, shapes))


def images_per_second(dtype: str, batch: int, iters: int, size: int) -> dict:
  """Times `iters` jitted forward passes (features, logits, spatial) of one batch."""
  model = inception.InceptionV3FID(with_spatial=True, dtype=jnp.dtype(dtype))
  images = jax.random.uniform(jax.random.PRNGKey(0), (batch, size, size, 3), minval=-1.0)
  variables = random_variables(model, images[:1])
  forward = jax.jit(model.apply)
  start = time.perf_counter()
  jax.block_until_ready(forward(variables, images))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return {'dtype': dtype, 'batch': batch, 'size': size, 'iters': iters,
          'first_call_s': round(compile_s, 2), 'batch_s_median': round(median, 4),
          'images_per_s': round(batch / median, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--iters', type=int, default=5)
  parser.add_argument('--size', type=int, default=299)
  parser.add_argument('--dtypes', default='float32,bfloat16',
                      help='comma-separated computation dtypes')
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = [images_per_second(d, args.batch, args.iters, args.size)
          for d in args.dtypes.split(',')]
  print(f'InceptionV3 (FID) at {args.size}x{args.size}, batch {args.batch}, on '
        f'{device.device_kind} ({device.platform}, {jax.device_count()} device(s))')
  print(f'{"dtype":<10} {"first call s":>13} {"batch s":>9} {"images/s":>10}')
  for r in rows:
    print(f'{r["dtype"]:<10} {r["first_call_s"]:>13} {r["batch_s_median"]:>9} '
          f'{r["images_per_s"]:>10}')
  print(json.dumps({'benchmark': 'features_inception_v3_fid', 'platform': device.platform,
                    'device': device.device_kind, 'results': rows}))


if __name__ == '__main__':
  main()
