"""ResNet-18 / ResNet-34 / ResNet-50 against torchvision with the same random weights."""

import jax
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

from gadc_jax import encoders  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import convert  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import resnet  # pylint: disable=g-import-not-at-top
import torch_oracle as oracle  # pylint: disable=g-import-not-at-top


@pytest.mark.parametrize('depth', [18, 34, 50])
def test_matches_torchvision(depth):
  torch.manual_seed(depth)
  net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
  # 64 x 64 keeps it cheap; every stage still strides and the last one ends at 2 x 2.
  images = oracle.random_images((2, 64, 64, 3), seed=depth)
  # torchvision's weights see ImageNet-normalised input; the Flax module normalises itself.
  normalised = oracle.nchw(images * 0.5 + 0.5)
  mean = torch.tensor(resnet.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(resnet.IMAGENET_STD).view(1, 3, 1, 1)
  normalised = (normalised - mean) / std
  oracle.calibrate_batchnorm(net, normalised, seed=depth)
  features = {}
  net.avgpool.register_forward_hook(lambda m, i, o: features.update(pool=o.flatten(1)))
  with torch.no_grad():
    logits = net(normalised).numpy()

  variables = convert.resnet_from_torch(oracle.state_dict_numpy(net), depth)
  out_features, out_logits = jax.jit(encoders.build(f'resnet{depth}', 1000).apply)(
      variables, images)
  assert out_features.shape == (2, 2048 if depth == 50 else 512)
  oracle.assert_close(out_features, features['pool'].numpy())
  oracle.assert_close(out_logits, logits)
