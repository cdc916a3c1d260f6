"""InceptionV3 (FID and torchvision forms) against PyTorch with the same random weights."""

import jax
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('torchvision')
fid_inception = pytest.importorskip('pytorch_fid.inception')

from gadc_jax import encoders  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import convert  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import inception  # pylint: disable=g-import-not-at-top
import torch_oracle as oracle  # pylint: disable=g-import-not-at-top


def fid_network():
  """pytorch-fid's fid_inception_v3 without its weight download: torchvision's network with
  the FID blocks swapped in, as that function builds it, and random weights."""
  torch.manual_seed(0)
  net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
  net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
  return net


def torchvision_network(transform_input):
  import torchvision  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                         transform_input=transform_input)


def torch_outputs(net, images):
  """(features [B, 2048], logits, Mixed_6d output [B, 17, 17, 768] NHWC) of a torch net."""
  seen = {}
  hooks = [net.avgpool.register_forward_hook(lambda m, i, o: seen.update(pool=o)),
           net.Mixed_6d.register_forward_hook(lambda m, i, o: seen.update(m6d=o))]
  with torch.no_grad():
    logits = net(oracle.nchw(images))
  for hook in hooks:
    hook.remove()
  return (seen['pool'].flatten(1).numpy(), logits.numpy(),
          seen['m6d'].permute(0, 2, 3, 1).numpy())


def check(net, model, variant, images):
  oracle.calibrate_batchnorm(net, oracle.nchw(images))
  features, logits, mixed_6d = torch_outputs(net, images)
  variables = convert.inception_from_torch(oracle.state_dict_numpy(net), variant)
  out = jax.jit(model.apply)(variables, images)
  oracle.assert_close(out[0], features)
  if variant == 'fid':  # Inception Score's logits: pool_3 . W, without the bias.
    logits = logits - net.fc.bias.detach().numpy()
  oracle.assert_close(out[1], logits)
  return out, mixed_6d


def test_fid_network_matches_pytorch_fid_at_299():
  images = oracle.random_images((2, 299, 299, 3))
  model = encoders.build('inception_v3_fid', 1008, with_spatial=True)
  net = fid_network()
  with torch.no_grad():
    net.fc.bias.normal_(0.0, 3.0)  # a bias that would move the logits, were it used.
  (features, logits, spatial), mixed_6d = check(net, model, 'fid', images)
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  # sFID: TF's mixed_6/conv[..., :7] = channels 0..6 of Mixed_6d, flattened (row, col, chan).
  assert spatial.shape == (2, 17 * 17 * 7)
  oracle.assert_close(spatial, mixed_6d[..., :7].reshape(2, -1))


def test_torchvision_network_matches_torchvision():
  # transform_input=True covers the input re-mapping; the FID test covers the plain path.
  # 75 x 75 is the smallest input the network takes (Mixed_7c at 1 x 1): every padded pool
  # sits on a border, so count_include_pad is exercised, and it is 16x cheaper than 299.
  images = oracle.random_images((2, 75, 75, 3), seed=1)
  model = inception.InceptionV3Torchvision(transform_input=True)
  (features, logits), _ = check(torchvision_network(True), model, 'torchvision', images)
  assert features.shape == (2, 2048) and logits.shape == (2, 1000)
