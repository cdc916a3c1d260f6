"""ResNet-18 / ResNet-34 / ResNet-50 against torchvision with the same random weights, in eval
mode (running statistics) and in train mode (batch statistics, running ones updated)."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

from gadc_jax import encoders  # pylint: disable=g-import-not-at-top
from gadc_jax import networks  # pylint: disable=g-import-not-at-top
from gadc_jax.distill import soft_labels  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import convert  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import resnet  # pylint: disable=g-import-not-at-top
import torch_oracle as oracle  # pylint: disable=g-import-not-at-top


def torch_input(images: np.ndarray) -> torch.Tensor:
  """NHWC images in [-1, 1] -> what torchvision's weights see: ImageNet-normalised NCHW (the
  Flax module normalises itself)."""
  mean = torch.tensor(resnet.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(resnet.IMAGENET_STD).view(1, 3, 1, 1)
  return (oracle.nchw(images * 0.5 + 0.5) - mean) / std


@pytest.mark.parametrize('depth', [18, 34, 50])
def test_matches_torchvision(depth):
  torch.manual_seed(depth)
  net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
  # 64 x 64 keeps it cheap; every stage still strides and the last one ends at 2 x 2.
  images = oracle.random_images((2, 64, 64, 3), seed=depth)
  normalised = torch_input(images)
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


def test_train_mode_matches_torchvision():
  torch.manual_seed(0)
  net = torchvision.models.resnet18(weights=None)
  # Running statistics of other images, so that the update has something to average with.
  oracle.calibrate_batchnorm(net, torch_input(oracle.random_images((4, 32, 32, 3), seed=1)))
  # A copy: the state dict's arrays share memory with torch's buffers, updated in place.
  variables = jax.tree.map(np.copy, convert.resnet_from_torch(oracle.state_dict_numpy(net), 18))
  # 32 x 32: the last stage sees 1 x 1, 4 values per channel, where torch's unbiased
  # running variance differs most from the biased one.
  images = oracle.random_images((4, 32, 32, 3), seed=2)
  for bn in net.modules():
    if isinstance(bn, torch.nn.BatchNorm2d):
      bn.momentum = 0.1  # calibrate_batchnorm set a cumulative average.
  net.train()
  with torch.no_grad():
    logits = net(torch_input(images)).numpy()

  apply = functools.partial(encoders.build('resnet18', 1000).apply, train=True,
                            mutable=['batch_stats'])
  (_, out_logits), updated = jax.jit(apply)(variables, images)
  oracle.assert_close(out_logits, logits)
  expected = convert.resnet_from_torch(oracle.state_dict_numpy(net), 18)['batch_stats']
  assert jax.tree.structure(updated['batch_stats']) == jax.tree.structure(expected)
  jax.tree.map(oracle.assert_close, updated['batch_stats'], expected)


def test_converted_teacher_labels_and_features_in_eval_mode(tmp_path):
  torch.manual_seed(3)
  net = torchvision.models.resnet18(weights=None)
  images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  # Running statistics of other images: a teacher in train mode would give other logits.
  oracle.calibrate_batchnorm(net, torch_input(oracle.random_images((4, 32, 32, 3), seed=4)),
                             seed=3)
  torch.save(net.state_dict(), tmp_path / 'resnet18.pth')
  with torch.no_grad():
    logits = net(torch_input(networks.to_unit_range(images))).numpy()

  config = ml_collections.ConfigDict({'networks': {
      'teacher': {'arch': 'resnet18', 'checkpoint': str(tmp_path / 'resnet18.pth')}}})
  # The two ways a converted network is run: the features / evaluation forward and the
  # students' soft labeler.
  model, variables, _ = networks.load_network(config, str(tmp_path), 'teacher')
  _, out_logits = networks.make_forward(model, variables, config.networks.teacher, 4)(images)
  oracle.assert_close(out_logits, logits)
  label, teacher_variables = soft_labels.make_labeler(config, str(tmp_path), ('teacher',), 1.0)
  oracle.assert_close(label(teacher_variables, images),
                      torch.softmax(torch.from_numpy(logits), -1).numpy())
