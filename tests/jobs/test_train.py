"""The train and sample jobs on digits: exact resume, SIGTERM, sharding, refusals."""

import glob
import os
import re
import signal
import subprocess
import sys
import textwrap

import flax
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import torch

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import generator
from gadc_jax import layout
from gadc_jax import preemption
from gadc_jax import repa_targets
from gadc_jax.diffusion import gaussian
from gadc_jax.jobs import sample
from gadc_jax.jobs import train
from gadc_jax.training import checkpoints
from gadc_jax.training import loss as loss_lib
from gadc_jax.training import train_state
from tests.conftest import REPO, digits_config, killed_after


def tiny_config(tfds_dir, **train_overrides):
  config = digits_config(tfds_dir)
  config.train = defaults.train()
  config.train.model_overrides = ml_collections.ConfigDict(
      {'depth': 1, 'hidden': 32, 'heads': 2})
  config.train.update({**dict(steps=6, batch_size=8, checkpoint_every=3, log_every=3,
                              grid_per_class=1), **train_overrides})
  config.train.sampler.steps = 5
  config.sample = defaults.sample()
  config.sample.update(dict(num_samples=12, batch_size=5))
  config.sample.sampler.steps = 5
  return config


def _final_params(config, workdir):
  _, params, _ = generator.restore_ema_params(config, workdir, 10, (8, 8, 1))
  state = checkpoints.Checkpointer(
      os.path.join(layout.train_dir(workdir, config), 'checkpoints')).manager
  return params, state.latest_step()


def test_kill_and_resume_is_bit_identical(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir)
  train.run(config, str(tmp_path / 'full'))

  real = train_state.make_train_step

  # A kill after the step-3 checkpoint.
  monkeypatch.setattr(train_state, 'make_train_step',
                      lambda *a, **k: killed_after(real(*a, **k), 4))
  with pytest.raises(KeyboardInterrupt):
    train.run(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(train_state, 'make_train_step', real)
  train.run(config, str(tmp_path / 'resumed'))

  full, _ = _final_params(config, str(tmp_path / 'full'))
  resumed, step = _final_params(config, str(tmp_path / 'resumed'))
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, full, resumed)
  grids = [f for f in os.listdir(layout.train_dir(str(tmp_path / 'full'), config))
           if f.startswith('grid-')]
  assert grids == ['grid-0000006.png']


def test_sigterm_checkpoints_and_stops(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir, checkpoint_every=100)
  real = train_state.make_train_step

  def make(*args, **kwargs):
    step = real(*args, **kwargs)
    calls = {'n': 0}

    def wrapped(*a):
      calls['n'] += 1
      if calls['n'] == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      return step(*a)
    return wrapped

  monkeypatch.setattr(train_state, 'make_train_step', make)
  old = signal.getsignal(signal.SIGTERM)
  with preemption.sigterm_requests_stop():
    with pytest.raises(preemption.Preempted, match='at step 2 of the train job'):
      train.run(config, str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is old  # the handler is removed again.
  ckpt = checkpoints.Checkpointer(os.path.join(layout.train_dir(str(tmp_path), config),
                                               'checkpoints'))
  assert ckpt.latest_step == 2
  assert not os.path.exists(os.path.join(layout.train_dir(str(tmp_path), config),
                                         'train.json'))


def _logged(out, tag):
  """{step: value} of scalar `tag` in the run's TensorBoard events."""
  (path,) = glob.glob(os.path.join(out, 'events.out.tfevents.*'))
  return {event.step: float(tf.make_ndarray(value.tensor))
          for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value if value.tag == tag}


def test_logs_interval_means_and_keeps_every_k(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir, steps=7, log_every=3, checkpoint_every=1, keep_every=2,
                       sample_every=0)
  real = train_state.make_train_step
  losses = []

  def make(*args, **kwargs):
    step = real(*args, **kwargs)

    def recorded(*a):
      state, metrics = step(*a)
      losses.append(float(metrics['loss']))
      return state, metrics
    return recorded

  monkeypatch.setattr(train_state, 'make_train_step', make)
  train.run(config, str(tmp_path))
  out = layout.train_dir(str(tmp_path), config)
  # As DiT's and SiT's train.py: the mean over the steps since the last log, not the last
  # step's loss; the last, short interval is step 7 alone.
  logged = _logged(out, 'loss')
  assert sorted(logged) == [3, 6, 7]
  np.testing.assert_allclose([logged[3], logged[6], logged[7]],
                             [np.mean(losses[0:3]), np.mean(losses[3:6]), losses[6]],
                             rtol=1e-6)
  # The latest two (6, 7) and the multiples of keep_every (2, 4, 6).
  kept = sorted(int(d) for d in os.listdir(os.path.join(out, 'checkpoints')) if d.isdigit())
  assert kept == [2, 4, 6, 7]


def test_keep_every_is_a_multiple_of_checkpoint_every(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, checkpoint_every=3, keep_every=4)
  with pytest.raises(ValueError, match=r'keep_every \(4\) must be a multiple of '
                                       r'config.train.checkpoint_every \(3\)'):
    train.run(config, str(tmp_path))


_ONE_STEP = textwrap.dedent('''
    import sys
    sys.path.insert(0, {repo!r})
    import jax, numpy as np, ml_collections
    from gadc_jax import defaults, generator
    from gadc_jax.training import loss, train_state
    from gadc_jax.diffusion import gaussian
    cfg = defaults.train()
    cfg.model_overrides = ml_collections.ConfigDict(dict(depth=1, hidden=32, heads=2))
    model = generator.build_model(cfg, 10)
    tx = train_state.optimizer(cfg.learning_rate, cfg.weight_decay)
    mesh = train_state.make_mesh({fsdp})
    init = lambda: train_state.create(
        generator.init_params(model, jax.random.PRNGKey(0), (8, 8, 1)), tx)
    shardings = train_state.param_sharding(mesh, jax.eval_shape(init), min_size=64)
    state = jax.jit(init, out_shardings=shardings)()
    step = train_state.make_train_step(
        loss.make_loss_fn(model, cfg, gaussian.create_diffusion(), None), tx, 0.9, mesh,
        shardings)
    rng = np.random.default_rng(0)
    batch = {{'x': rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
             'y': rng.integers(0, 10, 16).astype(np.int32)}}
    batch = jax.device_put(batch, train_state.batch_sharding(mesh))
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    leaves = jax.tree.leaves(jax.device_get(state.params))
    np.savez({out!r}, loss=np.asarray(metrics['loss']), *leaves)
    print(len(jax.devices()))
''')


def _one_step(tmp_path, devices, fsdp):
  out = str(tmp_path / f'step-{devices}-{fsdp}.npz')
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _ONE_STEP.format(repo=REPO, out=out,
                                                                  fsdp=fsdp)],
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[-1] == str(devices)
  with np.load(out) as z:
    return {k: z[k] for k in z.files}


def test_one_step_on_8_devices_equals_1_device(tmp_path):
  one = _one_step(tmp_path, 1, 1)
  for fsdp in (1, 2):  # pure data parallel, and data x fsdp
    eight = _one_step(tmp_path, 8, fsdp)
    for k in one:
      np.testing.assert_allclose(eight[k], one[k], rtol=2e-4, atol=2e-6, err_msg=k)


def test_sample_job_is_balanced_resumable_and_checked(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  workdir = str(tmp_path)
  train.run(config, workdir)
  summary = sample.run(config, workdir)
  with np.load(summary['path']) as z:
    images, labels = z['images'], z['labels']
  assert images.shape == (12, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.arange(12) % 10)
  # Resume: drop the merged file and one part; the redone part is identical.
  out = os.path.dirname(summary['path'])
  os.remove(os.path.join(out, 'samples.json'))
  os.remove(os.path.join(out, 'parts', 'part-00001.npz'))
  sample.run(config, workdir)
  with np.load(summary['path']) as z:
    np.testing.assert_array_equal(z['images'], images)
  # Another model size cannot read this checkpoint: a clear error, nothing overwritten.
  config.train.model_overrides.hidden = 64
  config.train.name = layout.train_name(tiny_config(tfds_dir))
  with pytest.raises(ValueError, match='does not fit the configured model'):
    generator.restore_ema_params(config, workdir, 10, (8, 8, 1))


def _release_state_dict(params) -> dict:
  """Flax DiT params -> a state_dict in the DiT release's layout (names and torch shapes):
  the inverse of convert.dit_from_torch, written out here as the oracle."""
  renames = [(r'^x_embedder\.', 'x_embedder.proj.'), (r'^t_embedder\.fc1', 't_embedder.mlp.0'),
             (r'^t_embedder\.fc2', 't_embedder.mlp.2'),
             (r'^y_embedder\.embedding$', 'y_embedder.embedding_table.weight'),
             (r'adaLN_modulation\.', 'adaLN_modulation.1.'), (r'blocks_(\d+)', r'blocks.\1'),
             (r'\.(kernel|scale)$', '.weight')]
  state = {}
  for path, array in flax.traverse_util.flatten_dict(params['params']).items():
    name, array = '.'.join(path), np.asarray(array)
    if path[-1] == 'kernel':  # Flax [*window, in, out] / [in, out] -> torch [out, in, ...].
      array = array.transpose(array.ndim - 1, array.ndim - 2, *range(array.ndim - 2))
    for pattern, repl in renames:
      name = re.sub(pattern, repl, name)
    state[name] = torch.from_numpy(np.ascontiguousarray(array))
  return state


def test_sample_job_reads_a_published_generator_file(tfds_dir, tmp_path):
  """config.train.weights: the release-layout file of a run's EMA params samples the same
  images as the run, with no train run in the workdir; the train job refuses to train, and a
  file of another class count is refused naming both counts."""
  config = tiny_config(tfds_dir)
  trained = str(tmp_path / 'trained')
  train.run(config, trained)
  with np.load(sample.run(config, trained)['path']) as z:
    expected = z['images']
  _, params, _ = generator.restore_ema_params(config, trained, 10, (8, 8, 1))
  weights = str(tmp_path / 'DiT-tiny.pt')
  torch.save(_release_state_dict(params), weights)

  config.train.weights = weights
  published = str(tmp_path / 'published')
  with np.load(sample.run(config, published)['path']) as z:
    np.testing.assert_array_equal(z['images'], expected)
  assert not os.path.exists(os.path.join(published, 'train'))
  with pytest.raises(ValueError, match='config.train.weights is set'):
    train.run(config, published)

  state = _release_state_dict(params)
  state['y_embedder.embedding_table.weight'] = state['y_embedder.embedding_table.weight'][:6]
  torch.save(state, weights)
  config.sample.name = 'five-classes'
  with pytest.raises(ValueError, match='is a generator of 5 classes; the data have 10'):
    sample.run(config, published)


def test_bad_input(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  config.train.model_overrides.patch = 3
  with pytest.raises(ValueError, match='not divisible by the DiT patch size 3'):
    train.run(config, str(tmp_path / 'a'))
  config = tiny_config(tfds_dir, selection='elsewhere')
  folder = tmp_path / 'b' / 'selections' / 'elsewhere'
  os.makedirs(folder)
  artifacts.atomic_write_json(str(folder / 'selection.json'), {
      'fingerprint': 'x', 'inputs': {'dataset': ['imagenet2012', '5.1.0', 'train']}})
  with pytest.raises(ValueError, match="was made on \\['imagenet2012'"):
    train.run(config, str(tmp_path / 'b'))
  config = tiny_config(tfds_dir)
  config.train.space = 'latent'
  with pytest.raises(ValueError, match='vae.checkpoint'):
    train.run(config, str(tmp_path / 'c'))
  with pytest.raises(ValueError, match='config.train.grad_clip must be a finite number >= 0'):
    train.run(tiny_config(tfds_dir, grad_clip=-1.0), str(tmp_path / 'd'))


def _write_repa_targets(config, workdir: str, tokens: np.ndarray) -> None:
  """REPA targets [N, T, W] float16 of config.train's images, recorded as the repa_targets
  job records them (computing them is that job's test)."""
  out = layout.repa_targets_dir(workdir, config)
  inputs = repa_targets.expected_inputs(config, workdir)
  artifacts.atomic_write_npy(os.path.join(out, repa_targets.shard_name(0)), tokens)
  artifacts.atomic_write_json(os.path.join(out, 'manifest.json'), {
      'fingerprint': artifacts.fingerprint(inputs), 'inputs': inputs,
      'files': artifacts.describe_files(out, [repa_targets.shard_name(0)])})


def test_repa_and_text_embeddings(tfds_dir, tmp_path):
  rng = np.random.default_rng(0)
  text_path = str(tmp_path / 'text.npz')
  np.savez(text_path, tokens=rng.standard_normal((10, 3, 5)).astype(np.float32),
           mask=np.ones((10, 3), np.float32))
  config = tiny_config(tfds_dir, steps=2, text_embeddings=text_path)
  config.train.model_overrides.update({'repa_depth': 1, 'repa_dim': 6, 'repa_hidden': 16})
  # Only its checkpoint's bytes enter the targets' fingerprint here.
  config.networks.repa = {'arch': 'dinov2_s14', 'checkpoint': text_path}
  config.train.repa.features = 'repa'
  workdir = str(tmp_path / 'w')
  _write_repa_targets(config, workdir,
                      rng.standard_normal((1437, 16, 6)).astype(np.float16))  # 4x4 tokens
  train.run(config, workdir)
  assert sample.run(config, workdir)['num_samples'] == 12

  # The REPA term enters the loss with its weight, on the same noise draw.
  cfg = config.train
  table = generator.load_text_table(cfg, 10)
  model = generator.build_model(cfg, 10, table)
  assert model.text_tokens == 3 and model.text_dim == 5
  params = generator.init_params(model, jax.random.PRNGKey(0), (8, 8, 1), table)
  loss_fn = loss_lib.make_loss_fn(model, cfg, gaussian.create_diffusion(), None, table)
  batch = {'x': rng.uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32),
           'y': np.arange(4, dtype=np.int32)}
  key = jax.random.PRNGKey(3)
  plain, _ = loss_fn(params, batch, key)
  with_repa, metrics = loss_fn(params, {**batch, 'repa': rng.standard_normal((4, 16, 6))},
                               key)
  assert -1.0 <= float(metrics['repa']) <= 1.0
  np.testing.assert_allclose(float(with_repa) - float(plain),
                             cfg.repa.weight * float(metrics['repa']), rtol=1e-4, atol=1e-6)


def test_repa_needs_a_head(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  config.train.repa.features = 'selection'
  with pytest.raises(ValueError, match='repa_depth'):
    train.run(config, str(tmp_path / 'w'))
