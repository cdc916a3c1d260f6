"""DINOv2 against transformers' Dinov2Model with the same random weights."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from gadc_jax import encoders  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import convert  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import dinov2  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import resnet  # pylint: disable=g-import-not-at-top
import torch_oracle as oracle  # pylint: disable=g-import-not-at-top


def hf_model(size, image_size):
  dim, depth, heads = dinov2.SIZES[size]
  config = transformers.Dinov2Config(
      hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
      image_size=image_size, patch_size=14, attn_implementation='eager')
  torch.manual_seed(0)
  model = transformers.Dinov2Model(config).eval()
  with torch.no_grad():  # layer scale starts at 1 and biases at 0: randomise what matters
    for name, p in model.named_parameters():
      if name.endswith(('lambda1', 'bias')):
        p.copy_(0.5 * torch.randn_like(p) + (1.0 if name.endswith('lambda1') else 0.0))
  return model


def hf_outputs(model, images):
  pixels = (oracle.nchw(images * 0.5 + 0.5)
            - torch.tensor(resnet.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
                resnet.IMAGENET_STD).view(1, 3, 1, 1)
  with torch.no_grad():
    out = model(pixel_values=pixels)
  return out.pooler_output.numpy(), out.last_hidden_state[:, 1:].numpy()


@pytest.mark.parametrize('image_size,input_hw', [
    (518, (28, 42)),  # published 37 x 37 grid shrunk to 2 x 3: non-square resize down
    (28, (56, 42)),   # 2 x 2 grid grown to 4 x 3
    (28, (28, 28)),   # native grid: no resize
])
def test_vit_s_matches_transformers(image_size, input_hw):
  model = hf_model('s', image_size)
  images = oracle.random_images((2, *input_hw, 3), seed=image_size)
  features, patches = hf_outputs(model, images)
  state = oracle.state_dict_numpy(model)
  variables = convert.dinov2_from_torch(state, 's', image_size=image_size)
  flax_model = dinov2.Dinov2S14(image_size=image_size, with_patch_tokens=True)
  out_features, logits, out_patches = jax.jit(flax_model.apply)(variables, images)
  assert logits is None
  assert out_patches.shape == (2, (input_hw[0] // 14) * (input_hw[1] // 14), 384)
  oracle.assert_close(out_features, features)
  oracle.assert_close(out_patches, patches)


def test_position_resize_is_torch_bicubic():
  # The interpolation alone, at a larger grid than the model tests use.
  grid = np.random.default_rng(0).normal(size=(37 * 37, 8)).astype(np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(grid).reshape(1, 37, 37, 8).permute(0, 3, 1, 2), size=(16, 23),
      mode='bicubic', align_corners=False).permute(0, 2, 3, 1).reshape(-1, 8).numpy()
  oracle.assert_close(dinov2.resize_position_embeddings(grid, (16, 23)), expected, 1e-5)


def test_old_transformers_names_convert():
  # facebook/dinov2-* checkpoints predate transformers 5's attention names.
  state = oracle.state_dict_numpy(hf_model('s', 28))
  old = {k.replace('attention.q_proj', 'attention.attention.query')
          .replace('attention.o_proj', 'attention.output.dense'): v for k, v in state.items()}
  assert 'encoder.layer.0.attention.attention.query.weight' in old
  expected = convert.dinov2_from_torch(state, 's', image_size=28)
  jax.tree.map(np.testing.assert_array_equal,
               convert.dinov2_from_torch(old, 's', image_size=28), expected)


@pytest.mark.parametrize('size', ['b', 'l'])
def test_larger_sizes_have_transformers_layout(size):
  # Shapes only: zero-stride views stand in for the weights, so ViT-L costs no memory.
  dim, depth, heads = dinov2.SIZES[size]
  config = transformers.Dinov2Config(hidden_size=dim, num_hidden_layers=depth,
                                     num_attention_heads=heads, image_size=518, patch_size=14)
  with torch.device('meta'):
    shapes = {k: tuple(v.shape) for k, v in transformers.Dinov2Model(config).state_dict().items()}
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  variables = convert.dinov2_from_torch(state, size)
  model = encoders.build(f'dinov2_{size}14', 0)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 14, 14, 3))))
