"""DiT converters against diffusers' DiTTransformer2DModel (random weights), and bad inputs."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from gadc_jax.models import convert
from gadc_jax.models import dit

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

TINY = dict(depth=2, hidden=64, patch=2, heads=4, num_classes=10)


def _diffusers_dit(depth=2, heads=4, head_dim=16, seed=0):
  """A random diffusers DiT laid out like a converted release checkpoint."""
  torch.manual_seed(seed)
  model = diffusers.DiTTransformer2DModel(
      num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=8,
      num_layers=depth, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
      norm_eps=1e-6).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.05 * torch.randn_like(p))
  first = model.transformer_blocks[0].norm1.emb
  for block in model.transformer_blocks:
    # Converted checkpoints hold one embedder, copied into every block.
    block.norm1.emb.load_state_dict(first.state_dict())
    # The original DiT's timestep frequencies (diffusers uses a shift of 1; see convert.py).
    block.norm1.emb.time_proj.downscale_freq_shift = 0
  return model


def _state(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def _original_layout(state):
  """The diffusers state_dict renamed to the DiT release's layout (the inverse of diffusers'
  conversion script): fused qkv, t_embedder.mlp, y_embedder, adaLN_modulation.1, final_layer."""
  out = {}
  for name, array in state.items():
    m = re.match(r'transformer_blocks\.(\d+)\.(.*)', name)
    if m is None:
      name = (name.replace('pos_embed.proj', 'x_embedder.proj')
              .replace('proj_out_1', 'final_layer.adaLN_modulation.1')
              .replace('proj_out_2', 'final_layer.linear'))
      out[name] = array
      continue
    block, rest = m.groups()
    if rest.startswith('norm1.emb.'):
      if block == '0':
        rest = (rest[len('norm1.emb.'):]
                .replace('timestep_embedder.linear_1', 't_embedder.mlp.0')
                .replace('timestep_embedder.linear_2', 't_embedder.mlp.2')
                .replace('class_embedder', 'y_embedder'))
        out[rest] = array
      continue
    if re.match(r'attn1\.to_[kv]\.', rest):
      continue
    if m := re.match(r'attn1\.to_q\.(weight|bias)', rest):
      kind = m.group(1)
      out[f'blocks.{block}.attn.qkv.{kind}'] = np.concatenate(
          [state[f'transformer_blocks.{block}.attn1.to_{p}.{kind}'] for p in 'qkv'])
      continue
    rest = (rest.replace('norm1.linear', 'adaLN_modulation.1')
            .replace('attn1.to_out.0', 'attn.proj')
            .replace('ff.net.0.proj', 'mlp.fc1').replace('ff.net.2', 'mlp.fc2'))
    out[f'blocks.{block}.{rest}'] = array
  out['pos_embed'] = dit.sincos_pos_embed_2d(64, 4, 4)[None]
  return out


@pytest.fixture(scope='module')
def reference():
  model = _diffusers_dit()
  rng = np.random.RandomState(0)
  x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
  t, y = np.array([3.0, 700.0], np.float32), np.array([1, 7])
  with torch.no_grad():
    out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).sample
  return model, (jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(y)), (
      out.numpy().transpose(0, 2, 3, 1))


def test_dit_from_diffusers_matches(reference):
  model, inputs, expected = reference
  ours = dit.DiT(**TINY)
  params = convert.dit_from_diffusers(_state(model), ours)
  out = ours.apply(params, *inputs, train=False)
  assert out.shape == (2, 8, 8, 8)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-4)


def test_dit_from_original_layout_matches(reference):
  model, inputs, expected = reference
  ours = dit.DiT(**TINY)
  params = convert.dit_from_torch(_original_layout(_state(model)), ours)
  np.testing.assert_allclose(ours.apply(params, *inputs, train=False), expected,
                             atol=1e-5, rtol=1e-4)


def test_checkpoint_of_another_size():
  wider = _original_layout(_state(_diffusers_dit(heads=4, head_dim=24)))  # hidden 96.
  with pytest.raises(ValueError, match=r'x_embedder.proj.weight has shape \(96, 4, 2, 2\).*'
                                      r'expects \(64, 4, 2, 2\)'):
    convert.dit_from_torch(wider, dit.DiT(**TINY))
  deeper = _state(_diffusers_dit(depth=3))
  with pytest.raises(ValueError, match='transformer_blocks.2'):
    convert.dit_from_diffusers(deeper, dit.DiT(**TINY))


def test_missing_tensor_and_untied_embedders(reference):
  model, _, _ = reference
  state = _original_layout(_state(model))
  del state['blocks.1.mlp.fc2.weight']
  with pytest.raises(ValueError, match=r'lacks 1 of .*blocks_1.mlp.fc2.kernel'):
    convert.dit_from_torch(state, dit.DiT(**TINY))
  state = _state(model)
  name = 'transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight'
  state[name] = state[name] + 1
  with pytest.raises(ValueError, match='shares one'):
    convert.dit_from_diffusers(state, dit.DiT(**TINY))


def test_load_torch_state_dict(tmp_path, reference):
  model, _, _ = reference
  path = str(tmp_path / 'ckpt.pt')
  torch.save({'model': model.state_dict(), 'ema': model.state_dict(), 'steps': 3}, path)
  with pytest.raises(ValueError, match='training checkpoint.*ema'):
    convert.load_torch_state_dict(path)
  state = convert.load_torch_state_dict(path, key='ema')
  np.testing.assert_array_equal(state['proj_out_2.bias'], model.proj_out_2.bias.detach().numpy())
  junk = tmp_path / 'junk.pt'
  junk.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='junk.pt is not a PyTorch checkpoint'):
    convert.load_torch_state_dict(str(junk))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    convert.load_torch_state_dict(str(tmp_path / 'missing.pt'))
  with pytest.raises(ValueError, match='no tensors'):
    convert.dit_from_torch({}, dit.DiT(**TINY))
