"""DiT converters against diffusers' DiTTransformer2DModel (random weights), and bad inputs."""

import math
import re

import jax
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


class _ReleaseDiT(torch.nn.Module):
  """A port of the GADC release's DiT (training/dit.py) at a small size: timm-style blocks, the
  text LabelEmbedder (Conv1d of kernel and stride `tokens` over the masked token embeddings,
  then e + MLP(e) plus the class table) and one REPA projector after block `encoder_depth`.
  The release fixes 1000 classes and 16 tokens of width 2048; here they are arguments."""

  def __init__(self, input_size=8, patch=2, channels=4, hidden=64, depth=2, heads=4,
               num_classes=10, tokens=4, width=12, z_dim=12, projector_dim=32, encoder_depth=1):
    super().__init__()
    nn = torch.nn
    self.patch, self.heads, self.channels = patch, heads, channels
    self.num_classes, self.encoder_depth = num_classes, encoder_depth
    self.x_embedder = nn.Module()
    self.x_embedder.proj = nn.Conv2d(channels, hidden, patch, patch)
    self.t_embedder = nn.Module()
    self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden))
    self.y_embedder = nn.Module()
    self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, hidden)
    self.y_embedder.mlp = nn.Sequential(
        nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6), nn.Linear(hidden, hidden),
        nn.SiLU(), nn.Linear(hidden, hidden))
    self.y_embedder.conv = nn.Conv1d(width, hidden, tokens, tokens, 0)
    grid = input_size // patch
    self.register_buffer('pos_embed', torch.from_numpy(_mae_pos_embed(hidden, grid))[None])
    self.projectors = nn.ModuleList([nn.Sequential(
        nn.Linear(hidden, projector_dim), nn.SiLU(), nn.Linear(projector_dim, projector_dim),
        nn.SiLU(), nn.Linear(projector_dim, z_dim))])
    self.blocks = nn.ModuleList()
    for _ in range(depth):
      block = nn.Module()
      block.attn = nn.Module()
      block.attn.qkv, block.attn.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
      block.mlp = nn.Module()
      block.mlp.fc1, block.mlp.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
      block.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
      self.blocks.append(block)
    self.final_layer = nn.Module()
    self.final_layer.linear = nn.Linear(hidden, patch * patch * 2 * channels)
    self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
    with torch.no_grad():  # every weight random, so that the release's zero inits matter too.
      for p in self.parameters():
        p.copy_(0.05 * torch.randn_like(p))

  def _label_embedding(self, ccls, labels, attn_mask, force_drop_ids):
    """The release's LabelEmbedder.forward (eval mode, optional forced drops)."""
    labels = labels * attn_mask.unsqueeze(2).float()
    if force_drop_ids is not None:
      drop = (force_drop_ids == 1)
      labels = torch.where(drop[:, None, None].expand_as(labels), torch.zeros_like(labels),
                           labels)
      ccls = torch.where(drop, self.num_classes, ccls)
    emb = self.y_embedder.conv(labels.permute(0, 2, 1)).permute(0, 2, 1).squeeze(1)
    return self.y_embedder.mlp(emb) + emb + self.y_embedder.embedding_table(ccls)

  def forward(self, x, t, y, ccls, attn_mask, force_drop_ids=None):
    """-> (output [N, 2C, H, W], projected tokens after block encoder_depth [N, T, z_dim])."""
    mod = lambda h, shift, scale: h * (1 + scale[:, None]) + shift[:, None]
    norm = lambda h: torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-6)
    x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
    n, tokens, d = x.shape
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    c = self.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1))
    c = c + self._label_embedding(ccls, y, attn_mask, force_drop_ids)
    for i, block in enumerate(self.blocks):
      s_msa, sc_msa, g_msa, s_mlp, sc_mlp, g_mlp = block.adaLN_modulation(c).chunk(6, dim=1)
      h = mod(norm(x), s_msa, sc_msa)
      qkv = block.attn.qkv(h).reshape(n, tokens, 3, self.heads, d // self.heads)
      q, k, v = qkv.permute(2, 0, 3, 1, 4)
      attn = torch.nn.functional.scaled_dot_product_attention(q, k, v)
      x = x + g_msa[:, None] * block.attn.proj(attn.transpose(1, 2).reshape(n, tokens, d))
      h = mod(norm(x), s_mlp, sc_mlp)
      h = block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(h), approximate='tanh'))
      x = x + g_mlp[:, None] * h
      if i + 1 == self.encoder_depth:
        zs_tilde = self.projectors[0](x.reshape(-1, d)).reshape(n, tokens, -1)
    shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
    x = self.final_layer.linear(mod(norm(x), shift, scale))
    p, c_out, side = self.patch, 2 * self.channels, int(tokens ** 0.5)
    x = torch.einsum('nhwpqc->nchpwq', x.reshape(n, side, side, p, p, c_out))
    return x.reshape(n, c_out, side * p, side * p), zs_tilde


def _mae_pos_embed(dim, grid):
  """MAE's get_2d_sincos_pos_embed, as the release copies it: w coordinates first."""
  def one_axis(pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    out = np.einsum('m,d->md', pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  w, h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
  return np.concatenate([one_axis(w), one_axis(h)], axis=1).astype(np.float32)


def _release_proj_loss(zs, zs_tilde):
  """The release's proj_loss: per example, the token mean of -cos; summed, over the batch."""
  f = torch.nn.functional.normalize
  per_example = [(-(f(z, dim=-1) * f(zt, dim=-1)).sum(-1)).mean() for z, zt in zip(zs, zs_tilde)]
  return sum(per_example) / len(zs)


def test_dit_from_torch_loads_the_gadc_release_text_branch_and_projector():
  torch.manual_seed(0)
  release = _ReleaseDiT().eval()
  state = {k: v.numpy() for k, v in release.state_dict().items()}
  ours = dit.DiT(**TINY, text_tokens=4, text_dim=12, repa_depth=1, repa_dim=12, repa_hidden=32)
  params = convert.dit_from_torch(state, ours)

  rng = np.random.RandomState(1)
  x = rng.normal(size=(3, 4, 8, 8)).astype(np.float32)
  t = np.array([3.0, 700.0, 250.0], np.float32)
  y = np.array([1, 7, 7])
  tokens = rng.normal(size=(10, 4, 12)).astype(np.float32)
  mask = np.ones((10, 4), np.float32)
  mask[7, 2:] = mask[1, 3:] = 0  # padded names: their padding tokens must not count.
  table = dit.TextTable(jnp.asarray(tokens), jnp.asarray(mask))
  drop = np.array([False, True, False])
  zs = rng.normal(size=(3, 16, 12)).astype(np.float32)
  tt = lambda a: torch.from_numpy(np.asarray(a))
  with torch.no_grad():
    expected, zs_tilde = release(tt(x), tt(t), tt(tokens[y]), tt(y), tt(mask[y]),
                                 force_drop_ids=tt(drop.astype(np.int64)))
    # The release's sampler makes the unconditional half with zero tokens and mask, class 1000.
    null_out, _ = release(tt(x), tt(t), torch.zeros(3, 4, 12), torch.full((3,), 10),
                          torch.zeros(3, 4))
    proj_loss = _release_proj_loss(tt(zs), zs_tilde)

  as_nhwc = lambda a: np.asarray(a).transpose(0, 2, 3, 1)
  args = (jnp.asarray(as_nhwc(x)), jnp.asarray(t))
  # One compilation for every call below (op by op, the test would take ten times longer).
  @jax.jit
  def apply(labels, drop_labels):
    out, extras = ours.apply(params, *args, labels, train=False, text_table=table,
                             drop_labels=drop_labels)
    return out, extras['repa'], dit.repa_loss(extras['repa'], jnp.asarray(zs))

  out, repa, repa_loss = apply(jnp.asarray(y), jnp.asarray(drop))
  np.testing.assert_allclose(out, as_nhwc(expected), atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(repa, zs_tilde.numpy(), atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(repa_loss, proj_loss.item(), rtol=1e-5)
  # Guidance's null label (num_classes) is the release's unconditional input.
  null, _, _ = apply(jnp.full((3,), 10), jnp.zeros(3, bool))
  np.testing.assert_allclose(null, as_nhwc(null_out), atol=1e-5, rtol=1e-4)

  # Several REPA projectors (the release's z_dims of several encoders): refused, by name.
  second = {**state, 'projectors.1.0.weight': state['projectors.0.0.weight']}
  with pytest.raises(ValueError, match=r'tensors this model lacks \(e.g. projectors.1.0.weight'):
    convert.dit_from_torch(second, ours)
  wider_text = dit.DiT(**TINY, text_tokens=4, text_dim=16, repa_depth=1, repa_dim=12,
                       repa_hidden=32)
  with pytest.raises(ValueError, match=r'conv.weight.*\(64, 12, 4\).*expects \(64, 16, 4\)'):
    convert.dit_from_torch(state, wider_text)
