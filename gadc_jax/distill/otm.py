"""OTM: the student's loss, CE + MSE to soft labels + a batch Sinkhorn distance (SinKD's).

SinKD (github 2018cx/SinKD, loss.py, `sinkhorn_loss`) compares the B student and B teacher
probability vectors of a batch: C_ij = ||p_i - q_j||_1, K = exp(-C / epsilon), then
`iterations` rounds of (rows to sum 1, then columns to sum 1) starting from K, and the distance
is sum_ij P_ij C_ij (total mass B: not divided by the batch). Gradients flow through P as well
as C, as SinKD's autograd does. Its defaults: softmax temperature 2, epsilon 0.1, 20 rounds.
"""

import jax
import jax.numpy as jnp
import optax


def l1_cost(p: jnp.ndarray, q: jnp.ndarray) -> jnp.ndarray:
  """p [B, K], q [M, K] -> C [B, M], C_ij = sum_k |p_ik - q_jk| (torch.cdist(p, q, p=1))."""
  return jnp.sum(jnp.abs(p[:, None, :] - q[None, :, :]), axis=-1)


def sinkhorn_normalized(kernel: jnp.ndarray, iterations: int) -> jnp.ndarray:
  """kernel [B, M] > 0 -> P [B, M] after `iterations` rounds of row then column scaling
  (the last step makes every column sum to 1)."""

  def one_round(x, _):
    x = x / jnp.sum(x, axis=1, keepdims=True)
    return x / jnp.sum(x, axis=0, keepdims=True), None

  return jax.lax.scan(one_round, kernel, None, length=iterations)[0]


def sinkhorn_distance(p: jnp.ndarray, q: jnp.ndarray, epsilon: float = 0.1,
                      iterations: int = 20) -> jnp.ndarray:
  """SinKD's batch Sinkhorn distance: p [B, K], q [M, K] probability vectors -> scalar
  sum(P * C) with C the l1 cost and P = sinkhorn_normalized(exp(-C / epsilon))."""
  cost = l1_cost(p, q)
  plan = sinkhorn_normalized(jnp.exp(-cost / epsilon), iterations)
  return jnp.sum(plan * cost)


def otm_loss(logits: jnp.ndarray, hard_labels: jnp.ndarray, soft_labels: jnp.ndarray, *,
             kappa1: float, kappa2: float, beta2: float, temperature: float = 2.0,
             epsilon: float = 0.1, iterations: int = 20) -> tuple[jnp.ndarray, dict]:
  """L = kappa1 CE(logits, hard) + kappa2 MSE(softmax(logits), soft)
         + beta2 SD(softmax(logits / temperature), soft).

  Args:
    logits: [B, K] the student's.
    hard_labels: [B] int32.
    soft_labels: [B, K] probability vectors (LIA's teachers' mean softmax).
    kappa1, kappa2, beta2: the weights; a zero weight skips its term (no Sinkhorn solve).
    temperature: the student's softmax temperature inside SD (SinKD: 2).
    epsilon, iterations: SD's entropic regularisation and normalisation rounds.

  MSE is the squared error summed over classes, averaged over the batch.
  Returns (loss, {'ce', 'mse', 'sd'}: the unweighted terms, 0 for skipped ones).
  """
  zero = jnp.zeros((), jnp.float32)
  ce = (optax.softmax_cross_entropy_with_integer_labels(logits, hard_labels).mean()
        if kappa1 else zero)
  mse = (jnp.mean(jnp.sum((jax.nn.softmax(logits) - soft_labels) ** 2, axis=-1))
         if kappa2 else zero)
  sd = (sinkhorn_distance(jax.nn.softmax(logits / temperature), soft_labels, epsilon,
                          iterations) if beta2 else zero)
  return kappa1 * ce + kappa2 * mse + beta2 * sd, {'ce': ce, 'mse': mse, 'sd': sd}
