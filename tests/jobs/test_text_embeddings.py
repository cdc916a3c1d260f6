"""The text_embeddings job on digits: transformers' T5 encoder of the class texts, padded
and masked; skipped when finished, recomputed when damaged, refused for other inputs."""

import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('tokenizers')

from gadc_jax import artifacts  # pylint: disable=g-import-not-at-top
from gadc_jax import jobs  # pylint: disable=g-import-not-at-top
from gadc_jax import layout  # pylint: disable=g-import-not-at-top
from gadc_jax.jobs import text_embeddings  # pylint: disable=g-import-not-at-top
from tests.conftest import digits_config  # pylint: disable=g-import-not-at-top
from tests.encoders import t5_oracle  # pylint: disable=g-import-not-at-top

TEXTS = ['tench', 'goldfish', 'great white shark', 'a', 'b c', 'shark fish', 'gold',
         'ten ten ten ten ten ten ten ten ten ten ten ten ten ten ten ten', 'white', 'fish']


@pytest.fixture
def setup(tfds_dir, tmp_path):
  folder = str(tmp_path / 'flan-t5-toy')
  model = t5_oracle.hf_encoder('gated-gelu')
  tokenizer = t5_oracle.hf_tokenizer()
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  names = str(tmp_path / 'names.txt')
  with open(names, 'w') as f:  # keyed by the label names '0'..'9', in another order.
    f.writelines(f'{label} {TEXTS[label]}\n' for label in reversed(range(10)))
  config = digits_config(tfds_dir)
  config.text_embeddings.update(checkpoint=folder, class_names=names, batch_size=4)
  return config, str(tmp_path / 'w'), model, tokenizer


def test_tokens_are_transformers_encoder_outputs(setup):
  config, workdir, model, tokenizer = setup
  record = jobs.run('text_embeddings', config, workdir)
  path = layout.text_embeddings_file(workdir, config.text_embeddings)
  assert path == os.path.join(workdir, 'text_embeddings', 'flan-t5-toy', 'text_embeddings.npz')
  expected = tokenizer(TEXTS, padding='max_length', max_length=16, truncation=True,
                       return_tensors='pt')
  with torch.no_grad():
    hidden = model(**expected).last_hidden_state.numpy()
  with np.load(path) as z:
    assert z['tokens'].dtype == np.float32 and z['tokens'].shape == (10, 16, 32)
    np.testing.assert_array_equal(z['mask'], expected['attention_mask'].numpy())
    assert z['mask'][7].all() and not z['mask'][0].all()  # truncated, and padded.
    np.testing.assert_allclose(z['tokens'], hidden, rtol=1e-5, atol=1e-5)
    assert list(z['texts']) == TEXTS
  assert record['shape'] == [10, 16, 32]

  # Finished: skipped. Damaged: computed again, to the same bytes.
  mtime = os.path.getmtime(path)
  assert jobs.run('text_embeddings', config, workdir) == record
  assert os.path.getmtime(path) == mtime
  with open(path, 'r+b') as f:
    f.truncate(100)
  jobs.run('text_embeddings', config, workdir)
  artifacts.verify_files(os.path.dirname(path), record['files'], 'text embeddings')

  # Other class texts: refused, not overwritten.
  config.text_embeddings.class_names = ''  # the label names '0'..'9' instead.
  with pytest.raises(ValueError, match='fingerprint mismatch'):
    jobs.run('text_embeddings', config, workdir)


def test_bad_input(setup, tmp_path):
  config, workdir, _, _ = setup
  with open(config.text_embeddings.class_names, 'w') as f:
    f.write('0 zero\n1 one\n')
  with pytest.raises(ValueError, match='no text for 8 of the 10 labels of the dataset, e.g. 2, 3, 4'):
    jobs.run('text_embeddings', config, workdir)
  with open(config.text_embeddings.class_names, 'w') as f:
    f.write('0 zero\n0 nought\n')
  with pytest.raises(ValueError, match="names.txt:2: label '0' appears twice"):
    jobs.run('text_embeddings', config, workdir)
  config.text_embeddings.class_names = ''
  os.remove(os.path.join(config.text_embeddings.checkpoint, 'tokenizer.json'))
  with pytest.raises(FileNotFoundError, match='has no tokenizer.json'):
    jobs.run('text_embeddings', config, workdir)
  config.text_embeddings.checkpoint = ''
  with pytest.raises(ValueError, match='checkpoint is not set'):
    text_embeddings.run(config, workdir)
  config.text_embeddings.update(checkpoint=str(tmp_path), tokens=0)
  with pytest.raises(ValueError, match='config.text_embeddings.tokens must be a positive'):
    text_embeddings.run(config, workdir)
