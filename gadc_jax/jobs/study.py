"""The study job: every cell of config.study's grid (gadc_jax.study), then the report.

    python main.py --config=configs/digits_study.py --workdir=workdir/digits-study

Runs the shared stages once in the workdir (train_classifier, features, and D2C's scorer and
difficulty scores when a cell's method reads them), then every distinct selection of the
grid in WORKDIR/selections (`study.selections`), then each cell in WORKDIR/cells/CELL/
(select, which finds its selection made, -> train -> sample -> evaluate against each of
config.study.references -> CAS), ending with its cell.json. A finished cell is skipped; a
cell stopped midway resumes through its jobs' own resume. Process 0 writes
WORKDIR/study.json (the command, the config, the grid). The job ends with the report job.

Selections and cells run in config.study.workers threads of the process: on a CPU, two
cells side by side use its cores better than one cell's ops do (on the 2-core machine the
digits DiT's train step takes 34 ms alone and 25 ms a cell with two threads). On several
processes (hosts) workers must be 1 and every stage and cell is run by all of them
together, as the pipeline's jobs are: the select job splits a selection's classes over the
hosts, the train job a batch over every device, so one cell at a time has the whole machine.

Cells of one shape compile the same programs (the train step, the sampler, the networks, a
method's selection): with config.study.compilation_cache the job keeps XLA's executables in
WORKDIR/jax_cache (JAX's persistent compilation cache, unless the process already has one),
so that only the first cell of a shape compiles them.

On SIGTERM the job stops after the cell's stage under way (Preempted); the same command
resumes it.
"""

import concurrent.futures
import contextlib
import os
import shlex
import sys
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import jax
import ml_collections

from gadc_jax import artifacts
from gadc_jax import difficulty
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax import preemption
from gadc_jax import study
from gadc_jax.evaluation import cas


def shared_stages(config: ml_collections.ConfigDict, grid) -> list:
  """The (job, config) runs every cell reads, in order."""
  runs = [('train_classifier', config), ('features', config)]
  if any(study.reads_difficulty(study.cell_config(config, cell)) for cell in grid):
    difficulty.check_config(config)
    runs += [('train', difficulty.scorer_config(config)), ('difficulty', config)]
  return runs


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
  t0 = time.time()
  yield
  seconds[stage] = time.time() - t0


def run_cell(config: ml_collections.ConfigDict, workdir: str,
             cell: study.Cell) -> dict[str, Any]:
  """Runs the cell's jobs in its workdir and writes its cell.json; returns the record."""
  out = study.cell_dir(workdir, cell)
  cell_cfg = study.cell_config(config, cell)
  artifacts.ensure_writable_dir(out, 'cell folder')
  study.link_shared(config, workdir, cell_cfg, out)
  inputs = study.cell_inputs(config, cell)
  seconds, metrics, diagnostics, selection = {}, {}, {}, ''
  t0 = time.time()
  if cell_cfg.train.selection:
    # The selection stage made it; the job checks it against this cell's inputs.
    with _timed(seconds, 'select'):
      summary = jobs.run('select', cell_cfg, out)
    # The seconds it took to make, once for every cell that shares it.
    seconds['selection_made'] = summary['seconds']
    selection = os.path.relpath(
        layout.selection_dir(workdir, layout.selection_name(cell_cfg.select)), workdir)
    diagnostics = {f'{space}.{name}': value
                   for space, values in summary['diagnostics'].items()
                   for name, value in values.items()}
  with _timed(seconds, 'train'):
    jobs.run('train', cell_cfg, out)
  with _timed(seconds, 'sample'):
    jobs.run('sample', cell_cfg, out)
  with _timed(seconds, 'evaluate'):
    for name, reference in config.study.references.items():
      eval_cfg = cell_cfg.copy_and_resolve_references()
      eval_cfg.evaluate.reference = reference
      eval_cfg.evaluate.out_name = name
      record = jobs.run('evaluate', eval_cfg, out)
      # The spread of IS and KID over splits / subsets is no quality of the samples.
      metrics.update({f'{key}.{name}': value for key, value in record['metrics'].items()
                      if '_std_' not in key})
  with _timed(seconds, 'cas'):
    metrics['cas'] = cas.run(cell_cfg, config.study.cas, out)['cas']
  seconds['total'] = time.time() - t0
  record = {
      'cell': cell.name, 'group': cell.group, 'family': cell.family, 'budget': cell.budget,
      'budget_value': study.budget_value(cell.budget), 'seed': cell.seed,
      'hparams': study.hparams(cell_cfg, cell), 'metrics': metrics, 'diagnostics': diagnostics,
      'seconds': seconds, 'selection': selection,
      'fingerprint': artifacts.fingerprint(inputs),
  }
  artifacts.atomic_write_json(os.path.join(out, 'cell.json'), record)
  logging.info('study cell %s: %s', cell.name,
               ', '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items())))
  return record


def write_study_record(config: ml_collections.ConfigDict, workdir: str, grid) -> None:
  artifacts.atomic_write_json(os.path.join(workdir, 'study.json'), {
      'command': shlex.join(['python', *sys.argv]),
      'config': config.to_dict(),
      'cells': [cell.name for cell in grid],
      'baseline_group': config.study.baseline_group,
      'lower_is_better': study.lower_is_better(config),
  })


@contextlib.contextmanager
def compilation_cache(folder: str):
  """JAX's persistent compilation cache in `folder` for the block, unless one is set."""
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  jax.config.update('jax_compilation_cache_dir', folder)
  try:
    yield
  finally:  # later work of this process (another job, a test) is not bound to this workdir.
    jax.config.update('jax_compilation_cache_dir', None)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  study.check_config(config)
  cache = os.path.join(workdir, 'jax_cache') if config.study.compilation_cache else ''
  with compilation_cache(cache) if cache else contextlib.nullcontext():
    _run(config, workdir)
  jobs.run('report', config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> None:
  grid = study.cells(config)
  workers = config.study.workers
  if workers > 1 and jax.process_count() > 1:
    raise ValueError(f'config.study.workers is {workers}, but on {jax.process_count()} '
                     'processes every cell is run by all of them together: set it to 1')
  if jax.process_index() == 0:
    write_study_record(config, workdir, grid)
  for job, job_config in shared_stages(config, grid):
    jobs.run(job, job_config, workdir)
  preemption.raise_if_agreed('after the shared stages of the study')
  made = study.selections(config, grid)

  def select(i: int) -> None:
    logging.info('study selection %d of %d: %s', i + 1, len(made), made[i].select.name)
    jobs.run('select', made[i], workdir)

  def cell(i: int) -> None:
    if study.finished(config, workdir, grid[i]) is not None:
      logging.info('study cell %s already finished; skipping.', grid[i].name)
      return
    logging.info('study cell %d of %d: %s', i + 1, len(grid), grid[i].name)
    run_cell(config, workdir, grid[i])

  in_workers(select, range(len(made)), workers, 'study selection')
  in_workers(cell, range(len(grid)), workers, 'study cell')


def in_workers(fn: Callable[[int], None], items: Sequence[int], workers: int,
               what: str) -> None:
  """fn(item) for every item, in order, on `workers` threads. A SIGTERM lets the work under
  way finish its stage and starts no more; the first error (Preempted included) is raised
  once the work under way has stopped."""

  def unless_stopped(item: int) -> None:
    preemption.raise_if_agreed(f'before {what} {item + 1}')
    fn(item)

  if workers == 1:
    for item in items:
      unless_stopped(item)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(unless_stopped, item) for item in items]
    concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for future in futures:
      future.cancel()  # those not started; the pool's exit waits for the running ones.
  for future in futures:
    if not future.cancelled() and future.exception() is not None:
      raise future.exception()
