"""The optimizer: AdamW, optionally after REPA's gradient clipping, against torch's."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gadc_jax.training import train_state

torch = pytest.importorskip('torch')


def _torch_steps(params, grads, lr, weight_decay, max_norm):
  """REPA's train.py steps: clip_grad_norm_ over all parameters (when max_norm), then
  torch.optim.AdamW. -> (final params, the norms clip_grad_norm_ returned)."""
  ps = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  opt = torch.optim.AdamW(list(ps.values()), lr=lr, weight_decay=weight_decay)
  norms = []
  for g in grads:
    for k, p in ps.items():
      p.grad = torch.tensor(g[k])
    if max_norm:
      norms.append(float(torch.nn.utils.clip_grad_norm_(list(ps.values()), max_norm)))
    opt.step()
  return {k: p.detach().numpy() for k, p in ps.items()}, norms


def _optax_steps(params, grads, tx):
  params = {k: jnp.asarray(v) for k, v in params.items()}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize('grad_clip', [0.0, 1.0])
def test_adamw_with_and_without_clipping_matches_torch(grad_clip):
  rng = np.random.default_rng(0)
  draw = lambda scale: {'a': (scale * rng.standard_normal(6)).astype(np.float32),
                        'b': (scale * rng.standard_normal((2, 3))).astype(np.float32)}
  params = draw(1.0)
  # Global norms about 35, 0.35 and 7: clipping changes Adam's moments unevenly over the
  # steps, and the norm is over both tensors together.
  grads = [draw(10.0), draw(0.1), draw(2.0)]
  tx = train_state.optimizer(1e-2, 0.1, grad_clip)
  expected, norms = _torch_steps(params, grads, 1e-2, 0.1, grad_clip)
  ours = _optax_steps(params, grads, tx)
  for k in params:
    np.testing.assert_allclose(ours[k], expected[k], rtol=1e-5, atol=1e-6)
  if grad_clip:
    global_norms = [np.sqrt(sum(np.sum(v ** 2) for v in g.values())) for g in grads]
    np.testing.assert_allclose(norms, global_norms, rtol=1e-5)
    unclipped, _ = _torch_steps(params, grads, 1e-2, 0.1, 0.0)
    assert np.abs(expected['a'] - unclipped['a']).max() > 1e-3  # clipping shows.
