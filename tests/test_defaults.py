"""The config defaults agree with the libraries that read them, and config arguments parse."""

import os
import runpy

import pytest

from gadc_jax import defaults
from gadc_jax.models import vae
from gadc_jax.selection import methods
from tests.conftest import REPO


def test_every_method_has_options_and_a_function():
  select = defaults.select()
  for name in defaults.METHODS:
    assert callable(methods.get_method(name))
    assert name in select
  with pytest.raises(ValueError, match='known: gadc, random, herding'):
    methods.get_method('magic')
  with pytest.raises(ValueError, match='magic'):
    defaults.method('magic')


def test_constants_match_the_libraries():
  assert defaults.train().vae.scale == vae.LATENT_SCALE


def test_presets():
  assert defaults.gadc('inception_v3').w_ce == 1200.0
  assert defaults.gadc().w_ce == 10.0
  with pytest.raises(ValueError, match='unknown encoder preset'):
    defaults.gadc('vgg')


def test_parse_args():
  args = defaults.parse_args('model=sit,budget=50/class,smoke=True', model='dit',
                             budget='10/class', smoke=False)
  assert (args.model, args.budget, args.smoke) == ('sit', '50/class', True)
  assert defaults.parse_args(None, smoke=False).smoke is False
  assert defaults.parse_args('steps=7', steps=1).steps == 7
  with pytest.raises(ValueError, match="'size=3'.*model"):
    defaults.parse_args('size=3', model='dit')
  with pytest.raises(ValueError, match='True or False'):
    defaults.parse_args('smoke=maybe', smoke=False)


def test_imagenet_selections_are_judged_in_dinov2_space():
  config = runpy.run_path(os.path.join(REPO, 'configs', 'imagenet.py'))['get_config'](None)
  evaluation = config.networks.evaluation
  assert (evaluation.arch, evaluation.input_size) == ('dinov2_b14', 224)
  assert 'evaluation' in config.features.networks
  assert config.select.eval_networks == ('evaluation',)
  assert config.select.network == 'selection'
