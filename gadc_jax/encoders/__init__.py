"""Encoders found by name: each returns (features, logits) for a batch of images."""

import importlib

import flax.linen as nn


# arch name -> "module:ClassName" inside gadc_jax.encoders.
_ARCHS = {
    'digits_cnn': 'digits:DigitsCNN',
    'digits_mlp': 'digits:DigitsMLP',
    'inception_v3_fid': 'inception:InceptionV3FID',
    'inception_v3': 'inception:InceptionV3Torchvision',
    'resnet18': 'resnet:ResNet18',
    'resnet34': 'resnet:ResNet34',
    'resnet50': 'resnet:ResNet50',
    'dinov2_s14': 'dinov2:Dinov2S14',
    'dinov2_b14': 'dinov2:Dinov2B14',
    'dinov2_l14': 'dinov2:Dinov2L14',
}


def build(arch: str, num_classes: int, **kwargs) -> nn.Module:
  """The Flax module for `arch`; its __call__(images) returns (features, logits)."""
  if arch not in _ARCHS:
    raise ValueError(f'unknown encoder arch {arch!r}; known: {", ".join(sorted(_ARCHS))}')
  module_name, class_name = _ARCHS[arch].split(':')
  module = importlib.import_module(f'gadc_jax.encoders.{module_name}')
  return getattr(module, class_name)(num_classes=num_classes, **kwargs)
