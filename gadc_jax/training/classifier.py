"""Classifier training shared by the train_classifier job (networks on the real data), CAS
(a classifier trained on a cell's samples, gadc_jax.evaluation.cas) and the distillation's
students: state, one jitted AdamW step over any loss, and top-1 accuracy. A classifier trained
on the same images with the same settings and seed is the same classifier.

A state is {'params': the module's variables, 'opt_state' (of variables['params']), 'step'};
a loss is loss_fn(variables, model, batch, key) -> (scalar, (metrics dict, updated running
statistics)), a hashable function (it is a static argument of the jitted step) that runs the
module through `train_apply`. Networks with BatchNorm (variables with 'batch_stats') train in
train mode, updating their running statistics, and are evaluated with them; the others have
only params and run the same way in both.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gadc_jax import networks


def init_state(model, tx, seed: int, image_shape) -> dict[str, Any]:
  """{'params', 'opt_state', 'step'} of a fresh classifier for images (H, W, C)."""
  variables = networks.init_params(model, seed, image_shape)
  return {'params': variables, 'opt_state': tx.init(variables['params']),
          'step': jnp.zeros((), jnp.int32)}


def batch_key(seed: int) -> jax.Array:
  """The key of a classifier's batches (train_state.batch_indices), apart from its init's."""
  return jax.random.PRNGKey(seed + 1)


def train_apply(model, variables, images: jnp.ndarray):
  """The module in training on float images [B, H, W, C] -> (its outputs, the updated
  running statistics): {'batch_stats'} for a network with BatchNorm, which normalises with
  the batch's statistics; {} for one without, which runs as in evaluation."""
  if 'batch_stats' not in variables:
    return model.apply(variables, images), {}
  return model.apply(variables, images, train=True, mutable=['batch_stats'])


def cross_entropy_loss(variables, model, batch, key):
  """CE of the hard labels: batch {'image': uint8 [B, H, W, C], 'label': int32 [B]}."""
  del key
  (_, logits), stats = train_apply(model, variables, networks.to_unit_range(batch['image']))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  return loss, ({}, stats)


@functools.partial(jax.jit, static_argnames=('model', 'tx', 'loss_fn'))
def train_step(state, batch, key, *, model, tx, loss_fn=cross_entropy_loss):
  """One optimizer step of loss_fn on `batch` -> (state, loss, metrics): the params move
  along the gradient, the running statistics (if any) take the values of this forward."""
  variables = state['params']

  def loss_of(params):
    return loss_fn({**variables, 'params': params}, model, batch, key)

  (loss, (metrics, stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
      variables['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], variables['params'])
  params = optax.apply_updates(variables['params'], updates)
  return ({'params': {**variables, **stats, 'params': params}, 'opt_state': opt_state,
           'step': state['step'] + 1}, loss, metrics)


@functools.partial(jax.jit, static_argnames=('model',))
def _predict(params, images, *, model):
  return jnp.argmax(model.apply(params, networks.to_unit_range(images))[1], axis=-1)


def accuracy(model, params, images: np.ndarray, labels: np.ndarray, batch_size=1024) -> float:
  """Top-1 accuracy of `model` on uint8 images [N, H, W, C] with labels [N]."""
  correct = 0
  placed = jax.tree.leaves(params)[0].sharding  # the images go where the params are.
  for i in range(0, len(labels), batch_size):
    pred = _predict(params, jax.device_put(images[i:i + batch_size], placed), model=model)
    correct += int(np.sum(np.asarray(pred) == labels[i:i + batch_size]))
  return correct / len(labels)
