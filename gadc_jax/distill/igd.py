"""IGD's guidance terms (Chen et al., ICLR 2025): deviation and influence.

Both are functions of one sample's x0 prediction; the sampler differentiates them with
respect to it and descends the gradient.

- Deviation G_D: the cosine similarity between x0_hat and its most similar earlier sample of
  the class (a memory of the last few). Descending it pushes the sample away from the
  nearest one already made, towards a more diverse set.
- Influence G_I: minus the sum over surrogate classifiers e of
  cos(grad_theta loss(f_theta_e(x0_hat), c), mean real gradient of class c at theta_e).
  Descending it makes the sample's training signal agree with the real data's.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

# apply(params, images [B, H, W, C] in [-1, 1]) -> logits [B, K].
LogitsFn = Callable[[object, jax.Array], jax.Array]


def _cosine(u: jax.Array, v: jax.Array) -> jax.Array:
  """Cosine similarity of the last axes, safe at zero vectors (then 0)."""
  dot = jnp.sum(u * v, axis=-1)
  # Clamped inside the square root: sqrt's derivative at 0 is infinite, and the empty slots
  # of a memory are zeros (a NaN gradient would leak through any mask applied afterwards).
  norms = jnp.sqrt(jnp.maximum(jnp.sum(u * u, axis=-1) * jnp.sum(v * v, axis=-1), 1e-24))
  return dot / norms


def deviation(x0: jax.Array, memory: jax.Array, memory_mask: jax.Array) -> jax.Array:
  """G_D = max over the valid memory rows of cos(x0, m); 0 with an empty memory.

  Args:
    x0: [d] the current x0 prediction, flattened.
    memory: [M, d] earlier samples of the class.
    memory_mask: [M] bool valid rows.
  Returns:
    [] the similarity to the nearest (most similar) earlier sample.
  """
  similarity = jnp.where(memory_mask, _cosine(x0[None], memory), -jnp.inf)
  return jnp.where(jnp.any(memory_mask), jnp.max(similarity), 0.0)


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def loss_gradient(logits_fn: LogitsFn, params, images: jax.Array, labels: jax.Array):
  """The gradient [P] (flattened over the params) of the mean cross-entropy of a batch.

  Args:
    logits_fn: the surrogate; params: its params.
    images: [B, H, W, C] in [-1, 1]; labels: [B] int.
  """
  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(p, images), labels).mean()
  return _flat(jax.grad(loss)(params))


def influence(logits_fn_list: Sequence[LogitsFn], params_list: Sequence, image: jax.Array,
              label: jax.Array, real_gradients: Sequence[jax.Array]) -> jax.Array:
  """G_I = - sum_e cos(grad_theta loss(f_e(image), label), real_gradients[e]).

  Args:
    logits_fn_list, params_list: the surrogates (one per checkpoint or seed).
    image: [H, W, C] in [-1, 1], the decoded x0 prediction.
    label: [] int, the class.
    real_gradients: per surrogate, [P_e] the mean real gradient of the class at its params.
  Returns:
    [] minus the summed gradient agreement.
  """
  total = 0.0
  for logits_fn, params, real in zip(logits_fn_list, params_list, real_gradients):
    grad = loss_gradient(logits_fn, params, image[None], label[None])
    total = total + _cosine(grad, real)
  return -total
