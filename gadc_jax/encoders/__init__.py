"""Encoders found by name: each returns (features, logits) for a batch of images."""

import importlib

import flax.linen as nn

from gadc_jax.artifacts import UserError

# arch name -> "module:ClassName" inside gadc_jax.encoders.
_ARCHS = {
    'digits_cnn': 'digits:DigitsCNN',
    'digits_mlp': 'digits:DigitsMLP',
}


def build(arch: str, num_classes: int, **kwargs) -> nn.Module:
  """The Flax module for `arch`; its __call__(images) returns (features, logits)."""
  if arch not in _ARCHS:
    raise UserError(f'unknown encoder arch {arch!r}; known: {", ".join(sorted(_ARCHS))}')
  module_name, class_name = _ARCHS[arch].split(':')
  module = importlib.import_module(f'gadc_jax.encoders.{module_name}')
  return getattr(module, class_name)(num_classes=num_classes, **kwargs)
