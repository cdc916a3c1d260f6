"""How long configs/imagenet.py takes on this device: every stage measured on a slice, projected.

    python benchmarks/imagenet_plan.py [--images 10000] [--classes 64] [--train_steps 50]
        [--samples 256] [--eval_images 10000] [--devices 8,64] [--budget 10]
    python benchmarks/imagenet_plan.py --tiny

Each stage of the paper's ImageNet-1K setup (configs/imagenet.py) runs on a representative
slice with the config's models at random weights (speed does not depend on them) and synthetic
inputs of ImageNet's shapes, compiled first, then timed:

    features   both feature networks (Inception-v3 at 299, DINOv2-B at 224) on --images images
    select     GADC on --classes classes of 1,300 images with 2,048-d features, --budget a class
    train      the SD-VAE encoding of the selected images, and --train_steps steps of the
               config's DiT-L/2 at its batch size (bfloat16 on an accelerator)
    sample     --samples images with the config's sampler (250 DDPM steps, CFG) and VAE decoding
    evaluate   the FID Inception-v3 on --eval_images images

and is projected to the paper's sizes: features of the 1,281,167 train images, 1,000 classes,
the config's train steps, 50,000 samples, their evaluation with ADM's 10,000 reference images.
The projection on N devices divides by N (data parallel, communication not counted); the
difficulty stage (D2C only) is not in the plan. --tiny checks the script on a CPU with small
models and counts (its projections mean nothing). The last line is one JSON object.
"""

import argparse
import json
import math
import os
import runpy
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import features_bench
import select_bench
import train_bench
from gadc_jax import encoders
from gadc_jax import generator
from gadc_jax import networks
from gadc_jax.models import vae as vae_lib
from gadc_jax.selection import gadc
from gadc_jax.selection import problem as problem_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's setup: ImageNet-1K's train split, its classes, the samples FID is reported on and
# the images of ADM's reference batch.
TRAIN_IMAGES, CLASSES, SAMPLES, REFERENCE_IMAGES = 1_281_167, 1000, 50_000, 10_000


def timed_batches(fn, num_items: int, batch: int) -> tuple[float, float]:
  """(compile seconds, seconds for num_items items) of fn(), which handles `batch` items."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  calls = max(1, math.ceil(num_items / batch))
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  return max(first - seconds / calls, 0.0), seconds * num_items / (calls * batch)


def image_batch(batch: int, size: int, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, size, size, 3), minval=-1.0)


def network_rate(net_cfg, num_images: int, batch: int, size: int) -> dict:
  """Images per second of a feature network (random weights) at input size `size`."""
  model = encoders.build(net_cfg.arch, networks.pretrained_num_classes(net_cfg.arch),
                         **networks.module_kwargs(net_cfg))
  images = image_batch(batch, size)
  variables = features_bench.random_variables(model, images[:1])
  forward = jax.jit(model.apply)
  compile_s, seconds = timed_batches(lambda: forward(variables, images), num_images, batch)
  return {'compile_s': compile_s, 'seconds': seconds, 'items': num_images,
          'per_s': num_images / seconds}


def select_rate(num_classes: int, n: int, dim: int, m: int, config) -> dict:
  """Classes per second of GADC (config.select.gadc) on classes of n images, dim features."""
  problems = problem_lib.stack_problems(
      [select_bench.reference_class(seed, n, dim) for seed in range(num_classes)])
  keys = jax.random.split(jax.random.key(0), num_classes)
  compile_s, seconds = timed_batches(
      lambda: gadc.select(problems, m, config.select.gadc, keys), num_classes, num_classes)
  return {'compile_s': compile_s, 'seconds': seconds, 'items': num_classes,
          'per_s': num_classes / seconds}


def vae_rates(channels, image_size: int, batch: int, num_images: int) -> tuple[dict, dict]:
  """Images per second of the SD-VAE's encoder and decoder (random weights)."""
  model = vae_lib.AutoencoderKL(channels=tuple(channels))
  images = image_batch(batch, image_size)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1])
  latents = jnp.zeros((batch,) + vae_lib.latent_shape(images.shape[1:], channels))
  encode = jax.jit(lambda p, x: model.apply(p, x, method='encode'))
  decode = jax.jit(lambda p, z: model.apply(p, z, method='decode'))
  rates = []
  for fn in (lambda: encode(params, images), lambda: decode(params, latents)):
    compile_s, seconds = timed_batches(fn, num_images, batch)
    rates.append({'compile_s': compile_s, 'seconds': seconds, 'items': num_images,
                  'per_s': num_images / seconds})
  return rates[0], rates[1]


def train_rate(train_cfg, steps: int, batch: int, bfloat16: bool) -> dict:
  """Steps per second of the train step (train_bench's: AdamW, EMA, the diffusion loss)."""
  sps, _ = train_bench.ours(batch, steps, train_cfg.model, bfloat16=bfloat16,
                            remat=train_cfg.remat, attention=train_cfg.attention)
  return {'seconds': steps / sps, 'items': steps, 'per_s': sps}


def sample_rate(config, num_samples: int, batch: int, image_size: int) -> dict:
  """Model-space samples per second with config.sample.sampler (random DiT weights)."""
  train_cfg = config.train
  model = generator.build_model(train_cfg, CLASSES)
  shape = generator.model_space_shape(train_cfg, (image_size, image_size, 3))
  params = jax.jit(lambda k: generator.init_params(model, k, shape))(jax.random.PRNGKey(0))
  labels = jnp.arange(batch) % CLASSES
  fn = lambda: generator.sample_model_space(train_cfg, model, params, labels,
                                            jax.random.PRNGKey(1), config.sample.sampler,
                                            CLASSES, (image_size, image_size, 3))
  compile_s, seconds = timed_batches(fn, num_samples, batch)
  return {'compile_s': compile_s, 'seconds': seconds, 'items': num_samples,
          'per_s': num_samples / seconds}


def plan(args) -> dict:
  """Measured slices and the projection of each stage (seconds on one device)."""
  config = runpy.run_path(os.path.join(REPO, 'configs', 'imagenet.py'))['get_config'](
      'smoke=True' if args.tiny else None)
  size = config.data.image_size
  bfloat16 = jax.default_backend() != 'cpu'
  config.train.bfloat16 = bfloat16
  if args.tiny:  # small models at small sizes: a check that every stage runs.
    size = 64
    config.train.vae.channels = (32, 32, 32, 32)
    config.train.model = 'DiT-S/8'
  stages = {}

  # Features: every network of config.features at its input size.
  rates = {}
  for name in config.features.networks:
    net_cfg = config.networks[name]
    input_size = args.tiny_sizes.get(net_cfg.arch, 75) if args.tiny else net_cfg.input_size
    rates[name] = network_rate(net_cfg, args.images, args.batch, input_size)
  stages['features'] = {
      'measured': rates,
      'projected_s': sum(TRAIN_IMAGES / r['per_s'] for r in rates.values())}

  # Selection.
  n, dim = (100, 64) if args.tiny else (1300, 2048)
  rate = select_rate(args.classes, n, dim, args.budget, config)
  stages['select'] = {'measured': {'gadc': rate}, 'projected_s': CLASSES / rate['per_s']}

  # Training: VAE encoding of the selection, then the train steps.
  encode, decode = vae_rates(config.train.vae.channels, size, args.batch, args.images)
  steps = train_rate(config.train, args.train_steps, config.train.batch_size, bfloat16)
  selected = args.budget * CLASSES
  stages['train'] = {
      'measured': {'vae_encode': encode, 'train_step': steps},
      'projected_s': selected / encode['per_s'] + config.train.steps / steps['per_s']}

  # Sampling and its decoding.
  samples = sample_rate(config, args.samples, min(args.samples, config.sample.batch_size),
                        size)
  stages['sample'] = {
      'measured': {'sampler': samples, 'vae_decode': decode},
      'projected_s': SAMPLES / samples['per_s'] + SAMPLES / decode['per_s']}

  # Evaluation: the FID Inception on the samples and ADM's reference images.
  net_cfg = config.networks[config.evaluate.networks[0]]
  input_size = args.tiny_sizes.get(net_cfg.arch, 75) if args.tiny else net_cfg.input_size
  rate = network_rate(net_cfg, args.eval_images, args.batch, input_size)
  stages['evaluate'] = {'measured': {config.evaluate.networks[0]: rate},
                        'projected_s': (SAMPLES + REFERENCE_IMAGES) / rate['per_s']}
  return {'config': {'train_model': config.train.model, 'train_steps': config.train.steps,
                     'train_batch': config.train.batch_size, 'bfloat16': bfloat16,
                     'sampler_steps': config.sample.sampler.steps, 'budget': args.budget},
          'stages': stages}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=10_000, help='images for the features')
  parser.add_argument('--batch', type=int, default=256, help='batch of networks and the VAE')
  parser.add_argument('--classes', type=int, default=64, help='classes selected')
  parser.add_argument('--budget', type=int, default=10, help='images selected a class')
  parser.add_argument('--train_steps', type=int, default=50)
  parser.add_argument('--samples', type=int, default=256)
  parser.add_argument('--eval_images', type=int, default=10_000)
  parser.add_argument('--devices', default='8,64', help='device counts to project onto')
  parser.add_argument('--tiny', action='store_true',
                      help='small models and counts: a quick check on a CPU')
  args = parser.parse_args()
  args.tiny_sizes = {'inception_v3': 75, 'inception_v3_fid': 75, 'dinov2_b14': 28}
  if args.tiny:
    args.images = args.eval_images = args.batch = args.samples = 2
    args.classes, args.train_steps = 2, 1
  counts = [1] + [int(d) for d in args.devices.split(',') if d]
  result = plan(args)
  device = jax.devices()[0].device_kind
  print(f'configs/imagenet.py on {device}: each stage measured on a slice, projected to the '
        f'paper\'s sizes ({result["config"]["train_model"]}, {result["config"]["train_steps"]} '
        f'steps at batch {result["config"]["train_batch"]}, {args.budget} images a class)')
  print(f'{"stage":<10}{"measured":<48}' + ''.join(f'{f"{n} device(s)":>14}' for n in counts))
  total = 0.0
  for stage, rec in result['stages'].items():
    measured = ', '.join(f'{k} {r["per_s"]:.3g}/s' for k, r in rec['measured'].items())
    total += rec['projected_s']
    print(f'{stage:<10}{measured:<48}' +
          ''.join(f'{rec["projected_s"] / n / 3600:13.2f}h' for n in counts))
  print(f'{"total":<10}{"":<48}' + ''.join(f'{total / n / 3600:13.2f}h' for n in counts))
  result.update(device=device, device_counts=counts, total_projected_s=total)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
