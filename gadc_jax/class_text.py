"""Class names as text, and their T5 token embeddings: the inputs of D2C's Attach (a).

The text of class c is the dataset's label name c, or what a names file gives for it; the
encoder is the T5 encoder of a local transformers checkpoint folder (FLAN-T5-XL for D2C),
tokenized by the folder's tokenizer.json.
"""

import os

import jax
import numpy as np

from gadc_jax import artifacts
from gadc_jax import batching
from gadc_jax.data import input_pipeline
from gadc_jax.encoders import convert
from gadc_jax.encoders import t5

# The weights files a checkpoint folder may hold (convert.t5_encoder_from_folder's order).
_WEIGHTS = ('model.safetensors.index.json', 'model.safetensors', 'pytorch_model.bin')


def class_texts(data_cfg, split: str, names_file: str) -> list[str]:
  """The text of each class of `split`, in label order.

  names_file: '' for the dataset's label names, else a text file of lines 'LABEL TEXT'
  (LABEL a label name without spaces, TEXT the rest of the line), covering every label.
  """
  labels = input_pipeline.split_info(data_cfg, split).class_names
  if not names_file:
    return list(labels)
  texts = {}
  try:
    with open(names_file) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        label, _, text = line.strip().partition(' ')
        if not text.strip():
          raise ValueError(f'{names_file}:{number}: expected "LABEL TEXT", found {line.strip()!r}')
        if label in texts:
          raise ValueError(f'{names_file}:{number}: label {label!r} appears twice')
        texts[label] = text.strip()
  except FileNotFoundError:
    raise FileNotFoundError(f'class names file {names_file} does not exist') from None
  missing = [label for label in labels if label not in texts]
  if missing:
    raise ValueError(f'{names_file} names no text for {len(missing)} of the {len(labels)} '
                     f'labels of the dataset, e.g. {", ".join(missing[:3])}')
  return [texts[label] for label in labels]


def checkpoint_fingerprints(folder: str) -> dict[str, str]:
  """{file: content hash} of what a checkpoint folder's embeddings depend on: its config,
  tokenizer and weights files (all shards of a sharded checkpoint)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'T5 checkpoint folder {folder} does not exist')
  tokenizer = os.path.join(folder, 'tokenizer.json')
  if not os.path.isfile(tokenizer):
    raise FileNotFoundError(
        f'{folder} has no tokenizer.json, the fast tokenizer file read here; transformers\' '
        'AutoTokenizer.from_pretrained(folder).save_pretrained(folder) writes it from '
        'spiece.model')
  names = ['config.json', 'tokenizer.json']
  weights = next((w for w in _WEIGHTS if os.path.isfile(os.path.join(folder, w))), None)
  if weights is not None:
    names.append(weights)
  if weights == _WEIGHTS[0]:
    names += sorted(set(artifacts.read_json(os.path.join(folder, weights))['weight_map']
                        .values()))
  return {name: artifacts.file_fingerprint(os.path.join(folder, name)) for name in names}


def embed(folder: str, texts: list[str], length: int,
          batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [C, length, d_model] float32, mask [C, length] int32) of `texts`: the last
  hidden states of the folder's T5 encoder over the padded / truncated token ids (mask 1 =
  a real token; padding positions hold what the encoder computes there)."""
  config, variables = convert.t5_encoder_from_folder(folder)
  ids, mask = t5.tokenize(os.path.join(folder, 'tokenizer.json'), texts, length)
  apply = jax.jit(t5.T5Encoder(config).apply)
  size = min(batch_size, len(texts))
  tokens = [batching.padded_call(lambda batch: apply(variables, *batch),
                                 (ids[i:i + size], mask[i:i + size]), size)
            for i in range(0, len(texts), size)]
  return np.concatenate([np.asarray(t, np.float32) for t in tokens]), mask
