"""The evaluate job: FID, sFID, KID, Inception Score, precision and recall of a samples file.

Both the samples and a reference set are embedded by every network of `evaluate.networks`
(names in config.networks, loaded with networks.load_network); each network is a
feature space, and metric names carry it: `fid_evaluation`, `precision_inception`, ...

    config.evaluate.samples     .npz with 'images' uint8 [N, H, W, C] (relative paths are under
                                the workdir); 'labels', if present, is not read: the metrics are
                                unconditional. '' reads the sample job's output, checked
                                against its samples.json first.
    config.evaluate.reference   'split:NAME' (real images of that split of config.data) or an
                                ADM reference batch .npz: images 'arr_0' uint8 [N, H, W, 3] and
                                optionally the dataset's Inception statistics 'mu', 'sigma',
                                'mu_s', 'sigma_s', used for the network `adm_stats_network`.

Against an ADM reference batch, the network `adm_stats_network` sees samples and arr_0 alike
as ADM's evaluator feeds TF's Inception graph (`embedding.adm_inception_input`: TF1 bilinear
resize to 299, (x - 128) / 128), so that its numbers are ADM's; other networks, and a split
reference, use each network's own preprocessing.

A module returns (features, logits) or (features, logits, spatial); sFID is computed only for
modules that return spatial features (flattened per image here; for Inception, ADM's
mixed_6/conv[..., :7]). Writes:

    WORKDIR/eval_cache/NETWORK-REFERENCE.npz   reference features and statistics, fingerprinted
    WORKDIR/eval/OUT_NAME.json                 metrics, inputs and their fingerprint
    WORKDIR/eval/OUT_NAME/events.out.tfevents.*  the metrics as TensorBoard scalars

A finished evaluation with the same inputs is skipped. Every host computes everything (the
cost is the embedding, sharded over the host's devices); host 0 writes, holding the lock of
eval/OUT_NAME/ so that a second run of the same evaluation refuses. On SIGTERM the job stops
between batches of an .npz (the samples, a reference file); a reference split is embedded and
cached whole first.
"""

import os
from typing import Any

from absl import logging
from clu import metric_writers
import jax
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import defaults
from gadc_jax import layout
from gadc_jax import networks
from gadc_jax import preemption
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.evaluation import embedding
from gadc_jax.evaluation import metrics as metrics_lib

_SPLIT_PREFIX = 'split:'


def _reference_split(reference: str) -> str | None:
  return reference[len(_SPLIT_PREFIX):] if reference.startswith(_SPLIT_PREFIX) else None


def _reference_inputs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """What the reference images are: a split of config.data, or the content of a file."""
  reference = config.evaluate.reference
  split = _reference_split(reference)
  if split is not None:
    info = input_pipeline.split_info(config.data, split)
    return {'split': [info.dataset, info.version, info.split, info.num_examples],
            'image_size': config.data.image_size}
  path = layout.resolve(workdir, reference)
  return {'file': os.path.basename(path), 'sha256': artifacts.file_fingerprint(path)}


def _stoppable(batches, what: str):
  """`batches`, with a stop before each once any host has received SIGTERM (every host embeds
  the same batches, so all of them ask at the same point)."""
  for batch in batches:
    preemption.raise_if_agreed(f'while embedding {what} in the evaluate job')
    yield batch


def _is_adm_network(cfg: ml_collections.ConfigDict, network: str) -> bool:
  """Whether `network` plays ADM's Inception: the reference is an ADM batch, not a split."""
  return _reference_split(cfg.reference) is None and network == cfg.adm_stats_network


def reference_embedding(config: ml_collections.ConfigDict, workdir: str, network: str,
                        forward, record: dict[str, Any]) -> dict[str, np.ndarray]:
  """The reference set in `network`'s space (see `embed`), from WORKDIR/eval_cache if there.

  For an ADM reference .npz and the network `adm_stats_network`, `forward` takes ADM's
  Inception input, the FID / sFID statistics are the file's (the whole dataset's, as ADM
  reports) and the features those of arr_0.
  """
  cfg = config.evaluate
  split = _reference_split(cfg.reference)
  adm = _is_adm_network(cfg, network)
  inputs = {'network': network, 'arch': record['arch'], 'checkpoint': record['params_fingerprint'],
            'reference': _reference_inputs(config, workdir), 'adm': adm}
  expected = artifacts.fingerprint(inputs)
  tag = (f'split-{split}' if split is not None else
         'file-' + os.path.splitext(os.path.basename(cfg.reference))[0])
  cache = os.path.join(layout.eval_cache_dir(workdir), f'{network}-{tag}.npz')
  if os.path.exists(cache):
    with np.load(cache) as data:
      artifacts.check_fingerprint(cache, expected, str(data['fingerprint']), 'reference cache')
      logging.info('reference %s in %s: from %s', cfg.reference, network, cache)
      return {key: data[key] for key in data.files if key != 'fingerprint'}

  what = f'reference {cfg.reference}'
  if split is not None:
    # Not stopped inside: a tf.data iterator dropped in the middle of a split can hang in its
    # destructor (seen with TF 2.21). The stop comes at the samples, after the cache is written.
    batches = (batch['image'] for batch in
               input_pipeline.iterate_batches(config.data, split, cfg.batch_size))
  else:
    batches = _stoppable(embedding.npz_image_batches(
        layout.resolve(workdir, cfg.reference), 'arr_0', cfg.batch_size), what)
  embedded = embedding.embed(forward, batches, what)
  if adm:
    for metric, (mu, sigma) in metrics_lib.reference_statistics(
        layout.resolve(workdir, cfg.reference)).items():
      embedded[f'{metric}_mu'], embedded[f'{metric}_sigma'] = mu, sigma
  if jax.process_index() == 0:
    artifacts.atomic_write_npz(cache, fingerprint=np.asarray(expected), **embedded)
  return embedded


# ----------------------------------------------------------------------------------------
# Metrics and the job.


def compute_metrics(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                    network: str, cfg: ml_collections.ConfigDict
                    ) -> tuple[dict[str, float], dict[str, str]]:
  """(metrics named NAME_NETWORK, skipped metrics with the reason) for one feature space.

  Precision and recall come from one computation, so asking for either reports both; 'is'
  and 'kid' add their std (over splits, over subsets) as is_std_NETWORK and kid_std_NETWORK.

  Args:
    samples, reference: embeddings (see `embed`) in the space of `network`.
    network: its name, the suffix of every metric name.
    cfg: config.evaluate (metrics, k, is_splits, kid_subsets, kid_subset_size, kid_seed).
  """
  results, skipped = {}, {}
  for name in cfg.metrics:
    key = f'{name}_{network}'
    if name in ('fid', 'sfid'):
      if f'{name}_mu' not in samples or f'{name}_mu' not in reference:
        skipped[key] = f'network {network!r} returns no spatial features'
        continue
      results[key] = metrics_lib.frechet_distance(
          samples[f'{name}_mu'], samples[f'{name}_sigma'],
          reference[f'{name}_mu'], reference[f'{name}_sigma'])
    elif name == 'is':
      results[key], results[f'is_std_{network}'] = metrics_lib.inception_score(
          samples['logits'], cfg.is_splits)
    elif name == 'kid':
      results[key], results[f'kid_std_{network}'] = metrics_lib.kid_from_features(
          samples['features'], reference['features'], cfg.kid_subset_size, cfg.kid_subsets,
          cfg.kid_seed)
    elif f'precision_{network}' not in results:  # precision or recall: one computation.
      precision, recall = metrics_lib.precision_recall(
          reference['features'], samples['features'], k=cfg.k)
      results.update({f'precision_{network}': precision, f'recall_{network}': recall})
  return results, skipped


def _check_config(config: ml_collections.ConfigDict) -> None:
  cfg = config.evaluate
  validation.require(cfg, 'config.evaluate',
                     positive_ints=('batch_size', 'k', 'is_splits', 'kid_subsets'),
                     non_negative_ints=('step', 'kid_seed'))
  if not (isinstance(cfg.kid_subset_size, int) and cfg.kid_subset_size >= 2):
    raise ValueError('config.evaluate.kid_subset_size must be an integer >= 2 (an unbiased '
                     f'MMD needs pairs), got {cfg.kid_subset_size!r}')
  unknown = [m for m in cfg.metrics if m not in defaults.EVALUATION_METRICS]
  if unknown:
    raise ValueError(f'config.evaluate.metrics: unknown {", ".join(unknown)}; known: '
                     + ', '.join(defaults.EVALUATION_METRICS))
  if not cfg.networks:
    raise ValueError('config.evaluate.networks is empty; name networks of config.networks')
  unknown = [n for n in cfg.networks if n not in config.networks]
  if unknown:
    raise ValueError(f'config.evaluate.networks: {", ".join(unknown)} not in config.networks '
                     f'(it has: {", ".join(config.networks)})')
  if not cfg.reference:
    raise ValueError("config.evaluate.reference is empty: 'split:NAME' of config.data, or "
                     'a reference batch .npz (e.g. ADM\'s VIRTUAL_imagenet256)')


def _samples(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, dict[str, Any]]:
  """(path, what they are) of the samples to evaluate.

  A file the user names is known by its bytes. The sample job's output is checked against
  its samples.json and known by that record's fingerprint: a samples.npz rebuilt from the
  parts holds the same images in other zip bytes, and its evaluation stays valid.
  """
  if config.evaluate.samples:
    path = layout.resolve(workdir, config.evaluate.samples)
    if not os.path.exists(path):
      raise FileNotFoundError(f'no samples at {path}')
    return path, {'file': os.path.basename(path), 'sha256': artifacts.file_fingerprint(path)}
  path = layout.samples_file(workdir, config)
  folder = os.path.dirname(path)
  done = os.path.join(folder, 'samples.json')
  if not os.path.exists(done):
    raise FileNotFoundError(f'no finished samples in {folder}; run the sample job first')
  record, name = artifacts.read_json(done), os.path.basename(path)
  artifacts.verify_files(folder, {name: record['files'][name]}, f'the samples of {folder}')
  return path, {'samples': record['fingerprint']}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates config.evaluate.samples; returns the record written to eval/OUT_NAME.json."""
  _check_config(config)
  out_name = layout.eval_name(config)
  events = os.path.join(workdir, 'eval', out_name)
  with artifacts.exclusive(events):
    return _evaluate(config, workdir, out_name, events)


def _evaluate(config: ml_collections.ConfigDict, workdir: str, out_name: str,
              events: str) -> dict[str, Any]:
  cfg = config.evaluate
  samples_path, samples_inputs = _samples(config, workdir)
  loaded = {name: networks.load_network(config, workdir, name)
              for name in cfg.networks}
  inputs = {
      'samples': samples_inputs,
      'reference': _reference_inputs(config, workdir),
      'networks': {name: [record['arch'], record['params_fingerprint']]
                   for name, (_, _, record) in loaded.items()},
      'options': {'metrics': list(cfg.metrics), 'k': cfg.k, 'is_splits': cfg.is_splits,
                  'kid': [cfg.kid_subsets, cfg.kid_subset_size, cfg.kid_seed],
                  'adm_stats_network': cfg.adm_stats_network},
  }
  expected = artifacts.fingerprint(inputs)
  out = layout.eval_path(workdir, out_name)
  if os.path.exists(out):
    record = artifacts.read_json(out)
    artifacts.check_fingerprint(out, expected, record['fingerprint'], 'evaluation')
    logging.info('evaluation %s already done; skipping.', out)
    return record

  samples_shape = embedding.npz_images_shape(samples_path, 'images')
  results, skipped, num_reference = {}, {}, {}
  for name, (model, variables, record) in loaded.items():
    forward = networks.make_forward(
        model, variables, config.networks[name], cfg.batch_size,
        embedding.adm_inception_input if _is_adm_network(cfg, name) else None)
    reference = reference_embedding(config, workdir, name, forward, record)
    if tuple(reference['images_shape'][1:]) != tuple(samples_shape[1:]):
      raise ValueError(
          f'{samples_path}: images are {tuple(samples_shape[1:])} but the reference '
          f'{cfg.reference} has {tuple(reference["images_shape"][1:])}')
    what = f'samples {samples_path}'
    samples = embedding.embed(forward, _stoppable(
        embedding.npz_image_batches(samples_path, 'images', cfg.batch_size), what), what)
    try:
      found, missing = compute_metrics(samples, reference, name, cfg)
    except ValueError as e:
      raise ValueError(f'evaluate in {name!r} space: {e}') from None
    results.update(found)
    skipped.update(missing)
    num_reference[name] = int(reference['images_shape'][0])
  for key, reason in skipped.items():
    logging.info('%s skipped: %s', key, reason)
  logging.info('evaluation %s: %s', out_name,
               ', '.join(f'{k} {v:.4f}' for k, v in sorted(results.items())))

  record = {'fingerprint': expected, 'inputs': inputs, 'metrics': results, 'skipped': skipped,
            'num_samples': int(samples_shape[0]), 'num_reference': num_reference,
            'step': cfg.step}
  if jax.process_index() == 0:
    writer = metric_writers.create_default_writer(events, just_logging=False)
    writer.write_scalars(cfg.step, results)
    writer.close()
    artifacts.atomic_write_json(out, record)
  return record
