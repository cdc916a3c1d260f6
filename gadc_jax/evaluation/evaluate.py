"""The evaluate job: FID, sFID, Inception Score, precision and recall of a samples file.

Both the samples and a reference set are embedded by every network of `evaluate.networks`
(names in config.networks, loaded with networks.load_network); each network is a
feature space, and metric names carry it: `fid_evaluation`, `precision_inception`, ...

    config.evaluate.samples     .npz with 'images' uint8 [N, H, W, C] (relative paths are under
                                the workdir); 'labels', if present, is not read: the metrics are
                                unconditional.
    config.evaluate.reference   'split:NAME' (real images of that split of config.data) or an
                                ADM reference batch .npz: images 'arr_0' uint8 [N, H, W, C] and
                                optionally the dataset's Inception statistics 'mu', 'sigma',
                                'mu_s', 'sigma_s', used for the network `adm_stats_network`.

A module returns (features, logits) or (features, logits, spatial); sFID is computed only for
modules that return spatial features (flattened per image here; for Inception, ADM's
mixed_6/conv[..., :7]). Writes:

    WORKDIR/eval_cache/NETWORK-REFERENCE.npz   reference features and statistics, fingerprinted
    WORKDIR/eval/OUT_NAME.json                 metrics, inputs and their fingerprint
    WORKDIR/eval/OUT_NAME/events.out.tfevents.*  the metrics as TensorBoard scalars

A finished evaluation with the same inputs is skipped. Every host computes everything (the
cost is the embedding, sharded over the host's devices); host 0 writes.
"""

import functools
import hashlib
import os
from typing import Any, Iterator
import zipfile

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gadc_jax import artifacts
from gadc_jax import networks
from gadc_jax.data import input_pipeline
from gadc_jax.evaluation import metrics as metrics_lib
from gadc_jax.evaluation import sample

METRICS = ('fid', 'is', 'precision', 'recall', 'sfid')
_SPLIT_PREFIX = 'split:'


def default_config() -> ml_collections.ConfigDict:
  """config.evaluate."""
  return ml_collections.ConfigDict({
      'samples': '',                   # a samples .npz; '' = the sample job's output.
      'reference': 'split:train',      # 'split:NAME' of config.data, or an ADM reference .npz.
      'networks': ('evaluation',),     # feature spaces: names in config.networks.
      'metrics': METRICS,
      'batch_size': 256,
      'k': 3,                          # neighbourhood size of precision / recall.
      'is_splits': 10,
      'out_name': '',                  # '' = the sample job's name.
      'step': 0,                       # TensorBoard step (e.g. the training step sampled).
      # The network whose features the statistics stored in an ADM reference .npz are in
      # (TF Inception pool_3 / mixed_6 of the whole dataset); other networks use arr_0.
      'adm_stats_network': 'inception',
  })


# ----------------------------------------------------------------------------------------
# Reading images.


def _resolve(workdir: str, path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(workdir, path)


def _file_sha256(path: str) -> str:
  try:
    with open(path, 'rb') as f:
      return hashlib.file_digest(f, 'sha256').hexdigest()[:16]
  except FileNotFoundError:
    raise artifacts.UserError(f'{path} does not exist') from None


def _open_npy_member(archive: zipfile.ZipFile, key: str, path: str):
  """(file positioned at the data, shape, dtype) of array `key` of an open .npz."""
  if f'{key}.npy' not in archive.namelist():
    keys = ', '.join(n[:-len('.npy')] for n in archive.namelist())
    raise artifacts.UserError(f'{path} has no array {key!r} (it has: {keys})')
  f = archive.open(f'{key}.npy')
  version = np.lib.format.read_magic(f)
  read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}.get(version)
  if read_header is None:
    raise artifacts.UserError(f'{path}: array {key!r} has .npy format {version}, not 1.0/2.0')
  shape, fortran_order, dtype = read_header(f)
  if dtype != np.uint8 or len(shape) != 4 or fortran_order:
    raise artifacts.UserError(
        f'{path}: array {key!r} must be uint8 images [N, H, W, C] in C order; it is '
        f'{dtype} {shape}{" in Fortran order" if fortran_order else ""}')
  return f, shape, dtype


def _open_npz(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except FileNotFoundError:
    raise artifacts.UserError(f'{path} does not exist') from None
  except zipfile.BadZipFile:
    raise artifacts.UserError(f'{path} is not an .npz file') from None


def npz_images_shape(path: str, key: str) -> tuple[int, ...]:
  """Shape [N, H, W, C] of uint8 images `key` of an .npz, read from its header only."""
  with _open_npz(path) as archive:
    f, shape, _ = _open_npy_member(archive, key, path)
    f.close()
    return shape


def npz_image_batches(path: str, key: str, batch_size: int) -> Iterator[np.ndarray]:
  """Batches uint8 [<= batch_size, H, W, C] of images `key` of an .npz, streamed.

  np.load would read the whole array (10 GB for 50,000 images at 256 px); this reads one
  batch at a time from the archive member, compressed or not.
  """
  with _open_npz(path) as archive:
    f, shape, dtype = _open_npy_member(archive, key, path)
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    with f:
      for start in range(0, shape[0], batch_size):
        count = min(batch_size, shape[0] - start)
        yield np.frombuffer(f.read(count * row_bytes), dtype).reshape((count,) + shape[1:])


# ----------------------------------------------------------------------------------------
# Embedding.


def embed(forward, batches, what: str) -> dict[str, np.ndarray]:
  """Embeds image batches; keeps features and logits, and the statistics of FID and sFID.

  Args:
    forward: `networks.make_forward` of a network of config.networks: uint8 images ->
      (features, logits[, spatial]).
    batches: uint8 image batches [<= the forward's batch size, H, W, C].
    what: names the images in errors.

  Returns:
    {'features' [N, D], 'logits' [N, K], 'images_shape' [4], 'fid_mu', 'fid_sigma'} and, for
    modules with spatial features, 'sfid_mu', 'sfid_sigma'.
  """
  kept, stats, count, image_shape = {'features': [], 'logits': []}, {}, 0, None
  for images in batches:
    b, image_shape = len(images), images.shape[1:]
    out = dict(zip(('features', 'logits', 'spatial'), forward(images)))
    for name, value in out.items():
      if not np.all(np.isfinite(value)):
        raise artifacts.UserError(f'{what}: the network gives non-finite {name} for images '
                                  f'{count}..{count + b - 1}; check the images and checkpoint')
    for metric, name in (('fid', 'features'), ('sfid', 'spatial')):
      if name in out:
        empty = metrics_lib.RunningStats.empty(out[name].shape[1])
        stats[metric] = stats.get(metric, empty).update(out[name])
    for name, parts in kept.items():
      parts.append(out[name])
    count += b
  if count < 2:
    raise artifacts.UserError(f'{what}: {count} images; at least 2 are needed')
  result = {name: np.concatenate(parts) for name, parts in kept.items()}
  result['images_shape'] = np.asarray((count,) + image_shape)
  for metric, running in stats.items():
    result[f'{metric}_mu'], result[f'{metric}_sigma'] = running.finalize()
  return result


# ----------------------------------------------------------------------------------------
# The reference set, cached per (network, reference).


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
  path = _resolve(workdir, reference)
  return {'file': os.path.basename(path), 'sha256': _file_sha256(path)}


def reference_embedding(config: ml_collections.ConfigDict, workdir: str, network: str,
                        forward, record: dict[str, Any]) -> dict[str, np.ndarray]:
  """The reference set in `network`'s space (see `embed`), from WORKDIR/eval_cache if there.

  For an ADM reference .npz and the network `adm_stats_network`, the FID / sFID statistics
  are the file's (the whole dataset's, as ADM reports) and the features those of arr_0.
  """
  cfg = config.evaluate
  split = _reference_split(cfg.reference)
  use_file_stats = split is None and network == cfg.adm_stats_network
  inputs = {'network': network, 'arch': record['arch'], 'checkpoint': record['params_fingerprint'],
            'reference': _reference_inputs(config, workdir), 'adm_stats': use_file_stats}
  expected = artifacts.fingerprint(inputs)
  tag = (f'split-{split}' if split is not None else
         'file-' + os.path.splitext(os.path.basename(cfg.reference))[0])
  cache = os.path.join(workdir, 'eval_cache', f'{network}-{tag}.npz')
  if os.path.exists(cache):
    with np.load(cache) as data:
      artifacts.check_fingerprint(cache, expected, str(data['fingerprint']), 'reference cache')
      logging.info('reference %s in %s: from %s', cfg.reference, network, cache)
      return {key: data[key] for key in data.files if key != 'fingerprint'}

  what = f'reference {cfg.reference}'
  if split is not None:
    batches = (batch['image'] for batch in
               input_pipeline.iterate_batches(config.data, split, cfg.batch_size))
  else:
    batches = npz_image_batches(_resolve(workdir, cfg.reference), 'arr_0', cfg.batch_size)
  embedding = embed(forward, batches, what)
  if use_file_stats:
    for metric, (mu, sigma) in metrics_lib.reference_statistics(
        _resolve(workdir, cfg.reference)).items():
      embedding[f'{metric}_mu'], embedding[f'{metric}_sigma'] = mu, sigma
  if jax.process_index() == 0:
    artifacts.atomic_write_npz(cache, fingerprint=np.asarray(expected), **embedding)
  return embedding


# ----------------------------------------------------------------------------------------
# Metrics and the job.


def compute_metrics(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                    network: str, cfg: ml_collections.ConfigDict
                    ) -> tuple[dict[str, float], dict[str, str]]:
  """(metrics named NAME_NETWORK, skipped metrics with the reason) for one feature space.

  Precision and recall come from one computation, so asking for either reports both; 'is'
  adds its std over splits as is_std_NETWORK.

  Args:
    samples, reference: embeddings (see `embed`) in the space of `network`.
    network: its name, the suffix of every metric name.
    cfg: config.evaluate (metrics, k, is_splits).
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
    elif f'precision_{network}' not in results:  # precision or recall: one computation.
      precision, recall = metrics_lib.precision_recall(
          reference['features'], samples['features'], k=cfg.k)
      results.update({f'precision_{network}': precision, f'recall_{network}': recall})
  return results, skipped


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  unknown = [m for m in cfg.metrics if m not in METRICS]
  if unknown:
    raise artifacts.UserError(f'evaluate.metrics: unknown {", ".join(unknown)}; known: '
                              + ', '.join(METRICS))
  if not cfg.networks:
    raise artifacts.UserError('evaluate.networks is empty; name networks of config.networks')
  if not cfg.reference:
    raise artifacts.UserError("evaluate.reference is empty: 'split:NAME' of config.data, or "
                              'a reference batch .npz (e.g. ADM\'s VIRTUAL_imagenet256)')


def out_path(workdir: str, out_name: str) -> str:
  return os.path.join(workdir, 'eval', f'{out_name}.json')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates config.evaluate.samples; returns the record written to eval/OUT_NAME.json."""
  cfg = config.evaluate
  _check_config(cfg)
  samples_path = (_resolve(workdir, cfg.samples) if cfg.samples
                  else sample.samples_file(config, workdir))
  out_name = cfg.out_name or sample.run_name(config)
  if not os.path.exists(samples_path):
    raise artifacts.UserError(f'no samples at {samples_path}; run the sample job first')
  loaded = {name: networks.load_network(config, workdir, name)
              for name in cfg.networks}
  inputs = {
      'samples': {'file': os.path.basename(samples_path), 'sha256': _file_sha256(samples_path)},
      'reference': _reference_inputs(config, workdir),
      'networks': {name: [record['arch'], record['params_fingerprint']]
                   for name, (_, _, record) in loaded.items()},
      'options': {'metrics': list(cfg.metrics), 'k': cfg.k, 'is_splits': cfg.is_splits,
                  'adm_stats_network': cfg.adm_stats_network},
  }
  expected = artifacts.fingerprint(inputs)
  out = out_path(workdir, out_name)
  if os.path.exists(out):
    record = artifacts.read_json(out)
    artifacts.check_fingerprint(out, expected, record['fingerprint'], 'evaluation')
    logging.info('evaluation %s already done; skipping.', out)
    return record

  samples_shape = npz_images_shape(samples_path, 'images')
  results, skipped, num_reference = {}, {}, {}
  for name, (model, variables, record) in loaded.items():
    forward = networks.make_forward(model, variables, config.networks[name], cfg.batch_size)
    reference = reference_embedding(config, workdir, name, forward, record)
    if tuple(reference['images_shape'][1:]) != tuple(samples_shape[1:]):
      raise artifacts.UserError(
          f'{samples_path}: images are {tuple(samples_shape[1:])} but the reference '
          f'{cfg.reference} has {tuple(reference["images_shape"][1:])}')
    samples = embed(forward, npz_image_batches(samples_path, 'images', cfg.batch_size),
                    f'samples {samples_path}')
    try:
      found, missing = compute_metrics(samples, reference, name, cfg)
    except ValueError as e:
      raise artifacts.UserError(f'evaluate in {name!r} space: {e}') from None
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
    writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'eval', out_name), just_logging=False)
    writer.write_scalars(cfg.step, results)
    writer.close()
    artifacts.atomic_write_json(out, record)
  return record
