"""Small Flax classifiers trained with optax: the step, the loss and top-1 accuracy.

The train_classifier job (the selection and evaluation networks) and CAS (a classifier
trained on a cell's samples, gadc_jax.evaluation.cas) train with these, so that a classifier
trained on the same images with the same settings and seed is the same classifier.
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
  params = networks.init_params(model, seed, image_shape)
  return {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}


def batch_key(seed: int) -> jax.Array:
  """The key of a classifier's batches (train_state.batch_indices), apart from its init's."""
  return jax.random.PRNGKey(seed + 1)


def _loss(params, model, images, labels):
  _, logits = model.apply(params, networks.to_unit_range(images))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=('model', 'tx'))
def train_step(state, images, labels, *, model, tx):
  """One AdamW step. images [B, H, W, C] uint8, labels [B] int32 -> (state, loss)."""
  loss, grads = jax.value_and_grad(_loss)(state['params'], model, images, labels)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}, loss


@functools.partial(jax.jit, static_argnames=('model',))
def _predict(params, images, *, model):
  return jnp.argmax(model.apply(params, networks.to_unit_range(images))[1], axis=-1)


def accuracy(model, params, images: np.ndarray, labels: np.ndarray, batch_size=1024) -> float:
  """Top-1 accuracy of the classifier on images uint8 [N, H, W, C] with labels [N]."""
  correct = 0
  placed = jax.tree.leaves(params)[0].sharding  # the images go where the params are.
  for i in range(0, len(labels), batch_size):
    pred = _predict(params, jax.device_put(images[i:i + batch_size], placed), model=model)
    correct += int(np.sum(np.asarray(pred) == labels[i:i + batch_size]))
  return correct / len(labels)
