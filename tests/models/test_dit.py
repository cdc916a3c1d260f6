"""DiT/SiT backbone: published parameter counts, shapes, label dropout, REPA, Attach, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.models import dit

# DiT paper (Peebles & Xie 2023), Table 1: parameters (millions) per size, for 256 px images
# (32x32x4 latents) and 1000 classes; the paper gives one number per size for every patch.
PUBLISHED_M = {'S': 33, 'B': 130, 'L': 458, 'XL': 675}

TINY = dict(depth=2, hidden=64, patch=2, heads=4, num_classes=10)


def _inputs(b=2, size=8):
  x = jax.random.normal(jax.random.key(1), (b, size, size, 4))
  return x, jnp.array([3.0, 700.0])[:b], jnp.array([1, 7])[:b]


def _random_params(model, *args, **kwargs):
  """Initialised params with every leaf redrawn, so zero-initialised layers matter too."""
  return _redrawn(model.init(jax.random.key(0), *args, **kwargs))


def _redrawn(params):
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return tree.unflatten(
      [0.05 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def test_parameter_counts_match_the_paper():
  counts = {name: dit.param_count(dit.make_dit(name))
            for name in dit.DIT_CONFIGS if name.startswith('DiT')}
  assert counts['DiT-XL/2'] == 675_129_632  # The DiT release's own count.
  for name, count in counts.items():
    size = name.split('-')[1].split('/')[0]
    # Patch size changes only the patch embedding and output layer (< 1M at any size).
    assert abs(count / 1e6 - PUBLISHED_M[size]) < 1.0, (name, count)


def test_output_channels_and_sit_names():
  x, t, y = _inputs()
  for learn_sigma, channels in ((True, 8), (False, 4)):
    model = dit.DiT(**TINY, learn_sigma=learn_sigma)
    params = model.init(jax.random.key(0), x, t, y, train=False)
    assert model.apply(params, x, t, y, train=False).shape == (2, 8, 8, channels)
  assert dit.make_dit('SiT-L/2').learn_sigma is False
  assert dit.make_dit('DiT-L/2').learn_sigma is True
  assert dit.DIT_CONFIGS['SiT-XL/2'] == dit.DIT_CONFIGS['DiT-XL/2']
  with pytest.raises(ValueError, match='DiT-Q/2'):
    dit.make_dit('DiT-Q/2')


def test_image_size_not_divisible_by_patch():
  model = dit.DiT(**{**TINY, 'patch': 4})
  x = jnp.zeros((2, 10, 10, 4))
  with pytest.raises(ValueError, match='10x10.*patch size 4'):
    model.init(jax.random.key(0), x, jnp.zeros(2), jnp.zeros(2, int), train=False)


def test_position_embedding_layout():
  # Column index in the first half of the channels, row index in the second (DiT's layout).
  pos = dit.sincos_pos_embed_2d(8, 2, 3)
  assert pos.shape == (6, 8)
  np.testing.assert_allclose(pos[1, :4], [np.sin(1), np.sin(1e-2), np.cos(1), np.cos(1e-2)],
                             rtol=1e-6)
  np.testing.assert_allclose(pos[1, 4:], [0, 0, 1, 1])
  np.testing.assert_allclose(pos[3, 4:], pos[1, :4], rtol=1e-6)


def test_label_drop_uses_null_class():
  x, t, y = _inputs()
  model = dit.DiT(**TINY)
  params = _random_params(model, x, t, y, train=False)
  dropped = model.apply(params, x, t, y, train=False, drop_labels=jnp.array([True, False]))
  null = model.apply(params, x, t, jnp.array([10, 7]), train=False)
  kept = model.apply(params, x, t, y, train=False)
  np.testing.assert_allclose(dropped, null, atol=1e-5)
  np.testing.assert_allclose(dropped[1], kept[1], atol=1e-5)
  assert np.abs(dropped[0] - kept[0]).max() > 1e-3
  # In training the labels are dropped with the 'label_dropout' stream; with probability 1
  # every label is the null class.
  always = dit.DiT(**TINY, class_dropout_prob=1.0)
  trained = always.apply(params, x, t, y, train=True, rngs={'label_dropout': jax.random.key(3)})
  np.testing.assert_allclose(trained, model.apply(params, x, t, jnp.array([10, 10]),
                                                  train=False), atol=1e-5)


def test_repa_head_and_loss():
  x, t, y = _inputs()
  model = dit.DiT(**TINY, repa_depth=1, repa_dim=12, repa_hidden=32)
  params = model.init(jax.random.key(0), x, t, y, train=False)
  out, extras = model.apply(params, x, t, y, train=False)
  assert out.shape == (2, 8, 8, 8)
  assert extras['repa'].shape == (2, 16, 12)  # 16 tokens of 2x2 patches.
  assert set(params['params']['projector']) == {'fc1', 'fc2', 'fc3'}
  a = jax.random.normal(jax.random.key(4), (2, 16, 12))
  np.testing.assert_allclose(dit.repa_loss(a, a), -1.0, rtol=1e-6)
  np.testing.assert_allclose(dit.repa_loss(a, -3 * a), 1.0, rtol=1e-6)
  e = jnp.eye(12)[None, :2]
  np.testing.assert_allclose(dit.repa_loss(e, e[:, ::-1]), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match='repa_depth 3'):
    dit.DiT(**TINY, repa_depth=3).init(jax.random.key(0), x, t, y, train=False)


def test_text_augmented_label_embedding():
  # The release's outputs on converted weights: tests/models/test_convert.py. Here: the mask,
  # the drops, the release's initialisation and the shape checks.
  x, t, y = _inputs()
  tokens = jax.random.normal(jax.random.key(5), (10, 3, 16))
  mask = jnp.ones((10, 3)).at[7, 2].set(0)  # class 7's last token is padding.
  table = dit.TextTable(tokens, mask)
  model = dit.DiT(**TINY, text_tokens=3, text_dim=16)
  init = jax.jit(lambda: model.init(jax.random.key(0), x, t, y, train=False,
                                    text_table=table))()
  # torch's defaults where the release does not re-initialise: N(0, 1) class table, conv bias
  # U(+-1/sqrt(3 * 16)); the conv kernel is N(0, 0.02).
  assert 0.8 < np.std(init['params']['y_embedder']['embedding']) < 1.2
  assert 0.015 < np.std(init['params']['text_conv']['kernel']) < 0.025
  bias = np.abs(init['params']['text_conv']['bias'])
  assert 0.5 / np.sqrt(48) < bias.max() <= 1 / np.sqrt(48)

  params = _redrawn(init)
  apply = jax.jit(lambda tokens, labels, drop: model.apply(
      params, x, t, labels, train=False, text_table=dit.TextTable(tokens, mask),
      drop_labels=drop))
  keep = jnp.zeros(2, bool)
  with_text = apply(tokens, y, keep)
  # Padding tokens are masked out; real ones count.
  np.testing.assert_allclose(apply(tokens.at[7, 2].set(9.0), y, keep), with_text, atol=1e-6)
  assert np.abs(apply(tokens.at[7, 1].set(9.0), y, keep) - with_text)[1].max() > 1e-3
  # A dropped label and the null label (num_classes) read no text: the same output whatever
  # the table holds.
  dropped = apply(tokens, y, jnp.ones(2, bool))
  np.testing.assert_allclose(apply(-tokens, y, jnp.ones(2, bool)), dropped, atol=1e-6)
  np.testing.assert_allclose(apply(tokens, jnp.array([10, 10]), keep), dropped, atol=1e-6)
  np.testing.assert_allclose(apply(-tokens, jnp.array([10, 10]), keep), dropped, atol=1e-6)
  shapes = lambda table: jax.eval_shape(
      lambda: model.apply(params, x, t, y, train=False, text_table=table))
  with pytest.raises(ValueError, match=r'tokens have shape \(10, 2, 16\).*\(10, 3, 16\)'):
    shapes(dit.TextTable(tokens[:, :2], mask))
  with pytest.raises(ValueError, match=r'mask have shape \(9, 3\).*\(10, 3\)'):
    shapes(dit.TextTable(tokens, mask[1:]))
  with pytest.raises(ValueError, match='text_table'):
    shapes(None)


def test_bfloat16_computation_keeps_float32_params():
  x, t, y = _inputs()
  model = dit.DiT(**TINY)
  params = _random_params(model, x, t, y, train=False)
  half = dit.DiT(**TINY, dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(
      half.init(jax.random.key(0), x, t, y, train=False)))
  out = half.apply(params, x, t, y, train=False)
  ref = model.apply(params, x, t, y, train=False)
  assert out.dtype == jnp.float32
  # bfloat16 keeps ~3 significant digits; the error stays around 1% of the output.
  assert np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2)) < 0.03


@pytest.mark.parametrize('remat', ['block', 'dots'])
def test_remat_policies_give_the_same_loss_and_gradients(remat):
  x, t, y = _inputs()
  target = jax.random.normal(jax.random.key(3), x.shape[:-1] + (8,))
  repa_target = jax.random.normal(jax.random.key(4), (2, 16, 32))
  kwargs = dict(TINY, repa_depth=1, repa_dim=32, repa_hidden=32)
  params = _random_params(dit.DiT(**kwargs), x, t, y, train=False)

  def loss_fn(model):
    def loss(p):
      out, extras = model.apply(p, x, t, y, train=False)
      return jnp.mean((out - target) ** 2) + dit.repa_loss(extras['repa'], repa_target)
    return jax.value_and_grad(loss)

  ref_loss, ref_grads = loss_fn(dit.DiT(**kwargs))(params)
  remat_fn = loss_fn(dit.DiT(**kwargs, remat=remat))
  # The policy is really applied: the gradient program recomputes inside a checkpoint.
  assert 'remat' in str(jax.make_jaxpr(remat_fn)(params))
  loss, grads = remat_fn(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads, ref_grads)


def test_attention_implementations_agree():
  """jax.nn.dot_product_attention (its XLA form; cuDNN's is the same call on a GPU) against
  this module's einsum attention, through a whole DiT: a wrong layout or scale would differ."""
  x, t, y = _inputs()
  params = _random_params(dit.DiT(**TINY), x, t, y, train=False)
  outs = {impl: dit.DiT(**TINY, attention=impl).apply(params, x, t, y, train=False)
          for impl in ('einsum', 'xla')}
  np.testing.assert_allclose(outs['xla'], outs['einsum'], rtol=1e-5, atol=1e-5)
  q, k, v = jax.random.normal(jax.random.key(5), (3, 2, 4, 16, 8))
  logits = np.einsum('bhqc,bhkc->bhqk', q, k) / np.sqrt(8)
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = np.einsum('bhqk,bhkc->bqhc', weights, v)
  for impl in ('einsum', 'xla'):
    np.testing.assert_allclose(dit.multi_head_attention(q, k, v, impl), expected, rtol=1e-5,
                               atol=1e-6)
  assert dit.resolve_attention('auto', jnp.float32) == 'einsum'  # no fused kernel in float32.
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    dit.resolve_attention('flash', jnp.float32)


def test_unknown_remat_policy_is_named():
  with pytest.raises(ValueError, match="unknown remat policy 'all'"):
    dit.block_class('all')
