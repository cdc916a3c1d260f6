"""The train_classifier job: small Flax classifiers trained with optax, orbax-checkpointed.

On digits this trains the selection network and the evaluation network (different
architecture and seed). Each network lands in WORKDIR/classifiers/NAME/: orbax checkpoints,
TensorBoard events, and classifier.json (the record later jobs read: arch, fingerprint of
the params, test accuracy). A finished network is skipped; an interrupted one resumes from
its last checkpoint and ends with the same params as an uninterrupted run. A run holds the
network's folder lock, so a second run on it refuses.
"""

import os
from typing import Any

from absl import logging
from clu import metric_writers
import jax
import ml_collections

from gadc_jax import artifacts
from gadc_jax import encoders
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.training import checkpoints
from gadc_jax.training import classifier
from gadc_jax.training import train_state


# The options of config.classifier that change a network's params or record; the others
# (which networks, how often to log or checkpoint) change neither.
_TRAINING = ('train_split', 'eval_split', 'steps', 'batch_size', 'learning_rate',
             'weight_decay')


def _inputs(config, name: str) -> dict[str, Any]:
  info = input_pipeline.split_info(config.data, config.classifier.train_split)
  return {
      'dataset': [info.dataset, info.version, info.split, info.num_examples],
      'image_size': config.data.image_size,
      'network': networks.settings(config.networks[name]),
      'training': {k: config.classifier[k] for k in _TRAINING},
  }


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Every option of the train_classifier job, checked before any work (one line each)."""
  cfg = config.classifier
  validation.require(cfg, 'config.classifier',
                     positive_ints=('steps', 'batch_size', 'log_every', 'checkpoint_every'),
                     positive=('learning_rate',), non_negative=('weight_decay',))
  networks.check_use(config, 'config.classifier.networks', cfg.networks,
                     [(f'config.classifier.{key}', cfg[key])
                      for key in ('train_split', 'eval_split')])
  for name in cfg.networks:
    if 'seed' not in config.networks[name]:
      raise ValueError(f'config.classifier.networks: network {name!r} has no seed; only '
                       'networks with a seed are trained here (the others load a checkpoint)')


def train_network(config: ml_collections.ConfigDict, workdir: str, name: str) -> dict:
  """Trains network `name` of config.networks (or returns its record if already trained)."""
  out = layout.classifier_dir(workdir, name)
  with artifacts.exclusive(out):
    return _train(config, name, out)


def _train(config: ml_collections.ConfigDict, name: str, out: str) -> dict:
  """train_network's work, in the folder `out` it holds."""
  record_path = os.path.join(out, 'classifier.json')
  inputs = _inputs(config, name)
  expected = artifacts.fingerprint(inputs)
  # Only checkpoints are work: TensorBoard events of a try that saved none bind nothing.
  record = artifacts.finished_or_start(record_path, os.path.join(out, 'inputs.json'),
                                       expected, inputs, 'classifier',
                                       work_dir=os.path.join(out, 'checkpoints'))
  if record is not None:
    logging.info('classifier %s already trained (test accuracy %.4f); skipping.', name,
                 record['test_accuracy'])
    return record

  cfg = config.classifier
  net_cfg = config.networks[name]
  train = input_pipeline.load_split_arrays(config.data, cfg.train_split)
  test = input_pipeline.load_split_arrays(config.data, cfg.eval_split)
  info = input_pipeline.split_info(config.data, cfg.train_split)
  model = encoders.build(net_cfg.arch, info.num_classes, **networks.module_kwargs(net_cfg))
  tx = train_state.optimizer(cfg.learning_rate, cfg.weight_decay)
  # Every process trains the same network on the same batches, on one device each.
  replicated = train_state.replicated_per_process()
  state = jax.device_put(classifier.init_state(model, tx, net_cfg.seed, info.image_shape),
                         replicated)

  ckpt = checkpoints.Checkpointer(os.path.join(out, 'checkpoints'), keep=1)
  if ckpt.latest_step is not None:
    state = ckpt.restore(state)
    logging.info('classifier %s: resuming at step %d', name, int(state['step']))

  writer = metric_writers.create_default_writer(out, just_logging=jax.process_index() > 0)
  key = classifier.batch_key(net_cfg.seed)
  num = len(train['label'])
  for step in range(int(state['step']), cfg.steps):
    idx = train_state.batch_indices(key, step, num, cfg.batch_size)
    batch = jax.device_put({'image': train['image'][idx], 'label': train['label'][idx]},
                           replicated)
    state, loss, _ = classifier.train_step(state, batch, key, model=model, tx=tx)
    if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
      writer.write_scalars(step + 1, {'train_loss': float(loss)})
    stop = preemption.stop_agreed()
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
      ckpt.save(step + 1, state)
    if stop:
      ckpt.wait()
      raise preemption.preempted(f'at step {step + 1} of classifier {name} ({out})')
  ckpt.wait()

  test_acc = classifier.accuracy(model, state['params'], test['image'], test['label'])
  writer.write_scalars(cfg.steps, {'test_accuracy': test_acc})
  writer.flush()
  logging.info('classifier %s (%s): test accuracy %.4f', name, net_cfg.arch, test_acc)
  record = {
      'fingerprint': expected,
      'inputs': inputs,
      'arch': net_cfg.arch,
      'num_classes': info.num_classes,
      'params_fingerprint': artifacts.array_fingerprint(state['params']),
      'test_accuracy': test_acc,
      'step': cfg.steps,
  }
  artifacts.atomic_write_json(record_path, record)
  return record


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  _check_config(config)
  for name in config.classifier.networks:
    train_network(config, workdir, name)
