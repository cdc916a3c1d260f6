"""The T5 encoder against transformers' T5EncoderModel with the same random weights, and the
tokenizer against transformers' T5TokenizerFast."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('tokenizers')

from gadc_jax.encoders import convert  # pylint: disable=g-import-not-at-top
from gadc_jax.encoders import t5  # pylint: disable=g-import-not-at-top
from t5_oracle import hf_encoder, hf_tokenizer  # pylint: disable=g-import-not-at-top

LENGTH = 16


@pytest.mark.parametrize('feed_forward_proj', ['gated-gelu', 'relu'])
def test_encoder_matches_transformers_with_padding(feed_forward_proj):
  model = hf_encoder(feed_forward_proj)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 40, (3, LENGTH))
  mask = np.ones((3, LENGTH), np.int64)
  mask[0, 5:] = 0
  mask[1, 11:] = 0
  ids[mask == 0] = 0
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  config = t5.T5Config.from_json(model.config.to_dict())
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = convert.t5_encoder_from_torch(state, config)
  got = np.asarray(t5.T5Encoder(config).apply(variables, ids, mask))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_relative_position_buckets_match_transformers():
  relative = (torch.arange(40)[None, :] - torch.arange(40)[:, None])
  expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      relative, bidirectional=True, num_buckets=32, max_distance=20).numpy()
  np.testing.assert_array_equal(t5.relative_position_buckets(40, 32, 20), expected)


def test_tokenize_matches_transformers(tmp_path):
  tokenizer = hf_tokenizer()
  tokenizer.save_pretrained(str(tmp_path))
  names = ['goldfish', 'tench', 'great white shark', 'a b c d e f g h i l n o r s t u a b c']
  expected = tokenizer(names, padding='max_length', max_length=LENGTH, truncation=True)
  ids, mask = t5.tokenize(str(tmp_path / 'tokenizer.json'), names, LENGTH)
  np.testing.assert_array_equal(ids, expected['input_ids'])
  np.testing.assert_array_equal(mask, expected['attention_mask'])
  assert ids[-1, -1] == 1 and mask[-1].all()  # truncated, and </s> kept last.
  assert mask[0].sum() < LENGTH and ids[0, -1] == 0


@pytest.mark.parametrize('max_shard_size', ['5GB', '8KB'])
def test_folder_converts_and_the_decoder_is_ignored(tmp_path, max_shard_size):
  config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1,
                                 num_decoder_layers=1, num_heads=2,
                                 feed_forward_proj='gated-gelu')
  torch.manual_seed(1)
  full = transformers.T5ForConditionalGeneration(config).eval()
  full.save_pretrained(str(tmp_path), max_shard_size=max_shard_size)
  sharded = os.path.exists(tmp_path / 'model.safetensors.index.json')
  assert sharded == (max_shard_size == '8KB')
  got_config, variables = convert.t5_encoder_from_folder(str(tmp_path))
  assert got_config == t5.T5Config.from_json(config.to_dict())
  ids = np.array([[5, 6, 7, 1]])
  with torch.no_grad():
    expected = full.get_encoder()(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(t5.T5Encoder(got_config).apply(variables, ids)),
                             expected, rtol=1e-5, atol=1e-5)


def test_bad_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    convert.t5_encoder_from_folder(str(tmp_path))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'d_model': 8}, f)
  with pytest.raises(ValueError, match='not a T5 config'):
    convert.t5_encoder_from_folder(str(tmp_path))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(hf_encoder('gated-gelu').config.to_dict(), f)
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    convert.t5_encoder_from_folder(str(tmp_path))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({**hf_encoder('gated-gelu').config.to_dict(), 'feed_forward_proj': 'swish'}, f)
  with pytest.raises(ValueError, match="'swish' is not supported"):
    convert.t5_encoder_from_folder(str(tmp_path))
  assert not os.path.exists(tmp_path / 'tokenizer.json')
  with pytest.raises(ValueError, match='not a readable tokenizer.json'):
    t5.tokenize(str(tmp_path / 'tokenizer.json'), ['x'], 4)
