"""The text_embeddings job: each class name through a T5 encoder (D2C's Attach, part a).

    WORKDIR/text_embeddings/NAME/
      inputs.json            what the embeddings are made from (checked on a rerun)
      text_embeddings.npz    tokens [C, L, W] float32 (the encoder's last hidden states),
                             mask [C, L] int32 (1 = a real token), texts [C] (what was read)
      text_embeddings.json   fingerprint, inputs, size and checksum of the .npz; written last

C is the number of classes of config.train.split, L = config.text_embeddings.tokens (16 for
D2C) and W the encoder's width (2048 for FLAN-T5-XL). Train on them with
--config.train.text_embeddings=WORKDIR/text_embeddings/NAME/text_embeddings.npz. A finished
folder is skipped; one whose .npz no longer matches its record is computed again.
"""

import os

from absl import logging
import jax
import ml_collections

from gadc_jax import artifacts
from gadc_jax import class_text
from gadc_jax import layout
from gadc_jax import validation


def _check_config(config: ml_collections.ConfigDict) -> None:
  cfg = config.text_embeddings
  validation.require(cfg, 'config.text_embeddings', positive_ints=('tokens', 'batch_size'))
  if not cfg.checkpoint:
    raise ValueError('config.text_embeddings.checkpoint is not set: give a local FLAN-T5 '
                     'folder (config.json, weights, tokenizer.json)')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  _check_config(config)
  cfg = config.text_embeddings
  folder = os.path.expanduser(cfg.checkpoint)
  texts = class_text.class_texts(config.data, config.train.split, cfg.class_names)
  inputs = {'texts': texts, 'tokens': cfg.tokens,
            'checkpoint': class_text.checkpoint_fingerprints(folder)}
  expected = artifacts.fingerprint(inputs)
  out_file = layout.text_embeddings_file(workdir, cfg)
  out = os.path.dirname(out_file)
  done_path = os.path.join(out, 'text_embeddings.json')
  with artifacts.exclusive(out):
    record = artifacts.finished_or_start(done_path, os.path.join(out, 'inputs.json'),
                                         expected, inputs, 'text embeddings')
    if record is not None:
      if not artifacts.damaged_on_rerun(out, record['files'], 'text embeddings'):
        return record
    tokens, mask = class_text.embed(folder, texts, cfg.tokens, cfg.batch_size)
    record = {'fingerprint': expected, 'inputs': inputs, 'num_classes': len(texts),
              'shape': list(tokens.shape)}
    if jax.process_index() == 0:
      artifacts.atomic_write_npz(out_file, tokens=tokens, mask=mask, texts=texts)
      record['files'] = artifacts.describe_files(out, [os.path.basename(out_file)])
      artifacts.atomic_write_json(done_path, record)
    logging.info('text embeddings %s: %s', out_file, tokens.shape)
    return record
