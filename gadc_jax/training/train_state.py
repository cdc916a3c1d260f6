"""Train state, EMA and the sharded, jitted train step shared by every trained model.

The step is one pure function `train_step(state, batch, key) -> (state, metrics)`; it runs
unchanged on one CPU, 8 GPUs or a pod slice: the batch is sharded over the "data" axis of a
Mesh and the state replicated (or, with an "fsdp" axis, each large parameter sharded along
its largest dimension divisible by that axis).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree


def create(params: PyTree, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def optimizer(learning_rate: float, weight_decay: float,
              grad_clip: float = 0.0) -> optax.GradientTransformation:
  """AdamW: the optimizer of every model trained here (classifiers, DiT, SiT).

  grad_clip > 0 first scales the gradients to global norm at most grad_clip, as REPA's
  train.py does (max norm 1.0, torch's clip_grad_norm_); 0 leaves them as they are (DiT).
  """
  adamw = optax.adamw(learning_rate, weight_decay=weight_decay)
  if grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
  return adamw


def batch_indices(key: jax.Array, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The examples [batch_size] of a step: a function of (key, step) alone, so a resumed run
  sees the same batches. Drawn without replacement unless the batch exceeds the set."""
  return np.asarray(jax.random.choice(jax.random.fold_in(key, step), num_examples,
                                      (batch_size,), replace=batch_size > num_examples))


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  """ema <- decay * ema + (1 - decay) * params."""
  return optax.incremental_update(params, ema, step_size=1.0 - decay)


def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
  """A ("data", "fsdp") mesh over every device; fsdp = 1 is pure data parallelism."""
  devices = np.array(jax.devices())
  if devices.size % fsdp:
    raise ValueError(f'fsdp={fsdp} does not divide the {devices.size} devices')
  return jax.sharding.Mesh(devices.reshape(-1, fsdp), ('data', 'fsdp'))


def replicated_per_process() -> jax.sharding.NamedSharding:
  """A copy on one device of every process: for small models each process trains alike on
  the same batches (the classifiers), whose state must still be one global array per leaf
  for checkpoints of several processes."""
  first = {}
  for device in jax.devices():
    first.setdefault(device.process_index, device)
  mesh = jax.sharding.Mesh(np.array([first[p] for p in sorted(first)]), ('process',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def param_sharding(mesh: jax.sharding.Mesh, tree: PyTree,
                   min_size: int = 2 ** 18) -> PyTree:
  """Shardings for a pytree: large leaves split over "fsdp" on their largest divisible axis."""
  fsdp = mesh.shape['fsdp']
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name

  def one(leaf):
    shape = np.shape(leaf)
    if fsdp == 1 or np.prod(shape, dtype=np.int64) < min_size:
      return jax.sharding.NamedSharding(mesh, P())
    axes = sorted(range(len(shape)), key=lambda a: -shape[a])
    axis = next((a for a in axes if shape[a] % fsdp == 0), None)
    if axis is None:
      return jax.sharding.NamedSharding(mesh, P())
    spec = [None] * len(shape)
    spec[axis] = 'fsdp'
    return jax.sharding.NamedSharding(mesh, P(*spec))

  return jax.tree.map(one, tree)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(('data', 'fsdp')))


LossFn = Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, ema_decay: float,
                    mesh: jax.sharding.Mesh, state_shardings: PyTree):
  """Jitted `train_step(state, batch, key) -> (state, metrics)` for loss_fn(params, batch, key).

  The key is folded with the step, so a resumed run draws the same noise as an
  uninterrupted one.
  """

  def train_step(state: TrainState, batch: PyTree, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(step=state.step + 1, params=params,
                     ema_params=ema_update(state.ema_params, params, ema_decay),
                     opt_state=opt_state)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), **metrics}
    return new, metrics

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(train_step,
                 in_shardings=(state_shardings, batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,), compiler_options=compiler_options())


def compiler_options() -> dict[str, str] | None:
  """XLA options for jitting a transformer step on the default backend.

  On the CPU, XLA (jaxlib 0.10) hands dots to YNNPACK by default; for DiT's matmuls, batched
  attention dots and their gradients that is about 20% slower than XLA's own (Eigen) path,
  measured by benchmarks/train_bench.py, so it is switched off there.
  """
  if jax.default_backend() == 'cpu':
    return {'xla_cpu_experimental_ynn_fusion_type': ''}
  return None
