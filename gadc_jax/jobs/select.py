"""The select job: a per-class subset of a split, by any selection method, with diagnostics.

Reads the FeatureStore of `select.network` (and of every `select.eval_networks`, to judge the
selection in spaces it did not optimise), splits the budget over the classes, runs the method
on batches of classes, and writes to WORKDIR/selections/NAME/:

    classes/class-00007.json   one finished class (resume skips these)
    selection.npz              per-class offsets, within-class indices, split positions, ids
    selection.json             config, input fingerprints, m and objective per class,
                               diagnostics per class and averaged, per feature space
    grid.png                   the selected images, a row per class

On several hosts each takes a disjoint set of classes; host 0 merges.
"""

import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import feature_store
from gadc_jax import layout
from gadc_jax import preemption
from gadc_jax import report
from gadc_jax.data import input_pipeline
from gadc_jax.selection import budget as budget_lib
from gadc_jax.selection import methods
from gadc_jax.selection import objective
from gadc_jax.selection import problem as problem_lib
from gadc_jax.transport import diagnostics as diagnostics_lib


def _validate(store: feature_store.FeatureStore, m: np.ndarray, budget: str) -> None:
  sizes = store.class_sizes()
  for c, (n, k) in enumerate(zip(sizes, m)):
    if n == 0:
      raise ValueError(f'class {c} has no images in {store.path}')
    if k < 1:
      raise ValueError(
          f'budget {budget} gives class {c} no image ({len(sizes)} classes); raise the budget')
    if k > n:
      raise ValueError(
          f'budget {budget} asks {k} images of class {c}, which has only {n}')


def _class_problem(store, c: int, tau: float) -> problem_lib.ClassProblem:
  feats = np.asarray(store.load('features', c), np.float32)
  bad = np.argwhere(~np.isfinite(feats))
  if len(bad):
    row = int(bad[0, 0])
    raise ValueError(
        f'non-finite features in {store.path}: class {c}, row {row} '
        f'(id {store.load("ids", c)[row]})')
  return problem_lib.make_problem(
      feats, store.probs(c), store.load('ce', c), store.load('entropy', c),
      store.load('maxprob', c), tau=tau)


def _open_stores(config, workdir: str):
  cfg = config.select
  store = feature_store.open_store(config, workdir, cfg.network, cfg.split)
  info = input_pipeline.split_info(config.data, cfg.split)
  if store.manifest['inputs']['dataset'][:3] != [info.dataset, info.version, info.split]:
    raise ValueError(
        f'{store.path} holds features of {store.manifest["inputs"]["dataset"][:3]}, not of '
        f'config.data {[info.dataset, info.version, info.split]}')
  eval_stores = {}
  for name in cfg.eval_networks:
    other = feature_store.open_store(config, workdir, name, cfg.split)
    if not (np.array_equal(other.offsets, store.offsets)
            and np.array_equal(other.load('positions'), store.load('positions'))):
      raise ValueError(f'{other.path} and {store.path} do not hold the same images')
    eval_stores[name] = other
  return store, eval_stores


def _class_path(out: str, c: int) -> str:
  return os.path.join(out, 'classes', f'class-{c:05d}.json')


def _score_class(config, store, eval_stores, c, prob, indices,
                 unconverged: int) -> dict[str, Any]:
  """Objective and diagnostics of one class's subset, in every feature space.

  `unconverged` counts the method's partial OT solves for this class that stopped at the
  iteration cap; the scoring solve adds one if it stops there too.
  """
  cfg = config.select
  score = objective.objective_of(prob, np.asarray(indices), cfg.gadc)
  diag = {cfg.network: diagnostics_lib.diagnostics(prob.features, indices, prob.ce,
                                                   cfg.diagnostics)}
  for name, other in eval_stores.items():
    diag[name] = diagnostics_lib.diagnostics(
        np.asarray(other.load('features', c), np.float32), indices,
        np.asarray(other.load('ce', c)), cfg.diagnostics)
  return {
      'class': c,
      'indices': [int(i) for i in indices],
      'ids': [str(store.load('ids', c)[i]) for i in indices],
      'objective': score.objective,
      'unconverged_solves': int(unconverged) + (not score.converged),
      'diagnostics': diag,
  }


def _select_classes(config, store, eval_stores, out, classes, m) -> None:
  """Runs the method on `classes` (all with budget m), writing one file per class."""
  cfg = config.select
  select_fn = methods.get_method(cfg.method)
  seed_key = jax.random.PRNGKey(cfg.seed)
  bar = tqdm.tqdm(total=len(classes), desc=f'select {cfg.method} m={m}', unit='class')
  for i in range(0, len(classes), cfg.classes_per_batch):
    batch = classes[i:i + cfg.classes_per_batch]
    # The spec's candidate filter belongs to GADC (select.gadc.tau); baselines see every image.
    tau = cfg.gadc.tau if cfg.method == 'gadc' else 0.0
    probs = [problem_lib.with_min_candidates(_class_problem(store, c, tau), m)
             for c in batch]
    keys = jax.vmap(lambda c: jax.random.fold_in(seed_key, c))(np.asarray(batch))
    result = select_fn(problem_lib.stack_problems(probs), m, cfg[cfg.method], keys)
    for c, prob, idx, unconverged in zip(batch, probs, np.asarray(result.indices),
                                         np.asarray(result.unconverged)):
      artifacts.atomic_write_json(
          _class_path(out, c),
          _score_class(config, store, eval_stores, c, prob, idx, unconverged))
    bar.update(len(batch))
    if preemption.requested():  # class batches are the unit of resumption.
      break
  bar.close()


def _merge(config, store, out: str, m: np.ndarray, inputs, expected, seconds) -> dict:
  records = [artifacts.read_json(_class_path(out, c)) for c in range(store.num_classes)]
  offsets = np.concatenate([[0], np.cumsum(m)])
  indices = np.concatenate([r['indices'] for r in records]).astype(np.int64)
  positions = np.concatenate(
      [np.asarray(store.load('positions', r['class']))[r['indices']] for r in records])
  ids = np.concatenate([r['ids'] for r in records]).astype(str)
  artifacts.atomic_write_npz(
      os.path.join(out, 'selection.npz'), offsets=offsets, indices=indices,
      positions=positions, ids=ids,
      labels=np.repeat(np.arange(store.num_classes), m).astype(np.int32))
  spaces = list(records[0]['diagnostics'])
  unconverged = {r['class']: r['unconverged_solves'] for r in records
                 if r['unconverged_solves']}
  if unconverged:
    logging.warning(
        'selection %s: partial OT solves stopped at the iteration cap '
        '(select.gadc.sinkhorn_max_iterations) without converging in classes %s (solves per '
        'class: %s); their objective values are approximate: raise the cap or epsilon.',
        out, ', '.join(map(str, unconverged)), unconverged)
  summary = {
      'fingerprint': expected,
      'inputs': inputs,
      'config': config.select.to_dict(),
      'num_selected': int(m.sum()),
      'per_class': m.tolist(),
      'objective_mean': float(np.mean([r['objective'] for r in records])),
      'objective': [r['objective'] for r in records],
      'unconverged_solves': [r['unconverged_solves'] for r in records],
      'unconverged_classes': sorted(unconverged),
      'diagnostics': {s: diagnostics_lib.average([r['diagnostics'][s] for r in records])
                      for s in spaces},
      'class_diagnostics': [r['diagnostics'] for r in records],
      'seconds': seconds,
  }
  artifacts.atomic_write_json(os.path.join(out, 'selection.json'), summary)
  _write_grid(config, store, out, records)
  return summary


def _write_grid(config, store, out: str, records) -> None:
  cfg = config.select
  shown = [np.asarray(store.load('positions', r['class']))[r['indices'][:cfg.grid_per_class]]
           for r in records[:cfg.grid_classes]]
  images = input_pipeline.read_examples(config.data, cfg.split, np.concatenate(shown))['image']
  rows = np.split(images, np.cumsum([len(s) for s in shown])[:-1])
  report.save_image_grid(rows, os.path.join(out, 'grid.png'))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.select
  methods.get_method(cfg.method)  # fail early on an unknown method.
  store, eval_stores = _open_stores(config, workdir)
  m = budget_lib.per_class_budget(cfg.budget, store.class_sizes())
  _validate(store, m, cfg.budget)
  inputs = {
      'dataset': store.manifest['inputs']['dataset'][:3],
      'features': store.fingerprint,
      'eval_features': {k: s.fingerprint for k, s in eval_stores.items()},
      'method': cfg.method,
      'method_config': cfg[cfg.method].to_dict(),
      'objective_config': cfg.gadc.to_dict(),
      'diagnostics': cfg.diagnostics.to_dict(),
      'per_class': m.tolist(),
      'seed': cfg.seed,
  }
  expected = artifacts.fingerprint(inputs)
  out = layout.selection_dir(workdir, layout.selection_name(cfg))
  final = os.path.join(out, 'selection.json')
  summary = artifacts.finished_or_start(final, os.path.join(out, 'classes', 'inputs.json'),
                                        expected, inputs, 'selection')
  if summary is not None:
    logging.info('selection %s already complete; skipping.', out)
    return summary
  multihost_utils.sync_global_devices(f'select {out} start')

  t0 = time.time()
  mine = [c for c in range(store.num_classes) if c % jax.process_count() == jax.process_index()]
  todo = [c for c in mine if not os.path.exists(_class_path(out, c))]
  logging.info('select %s: %d classes, %d left on this host, %d images in all', out,
               store.num_classes, len(todo), int(m.sum()))
  for size in sorted(set(m[todo].tolist())):
    if not preemption.requested():
      _select_classes(config, store, eval_stores, out, [c for c in todo if m[c] == size], size)
  preemption.raise_if_agreed(f'in the select job, {out}')
  multihost_utils.sync_global_devices(f'select {out} classes')
  summary = None
  if jax.process_index() == 0:
    summary = _merge(config, store, out, m, inputs, expected, time.time() - t0)
    logging.info('selection written to %s (mean objective %.4f)', out,
                 summary['objective_mean'])
  multihost_utils.sync_global_devices(f'select {out} merged')
  return summary if summary is not None else artifacts.read_json(final)
