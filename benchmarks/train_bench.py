"""Train-step throughput of DiT-S/2 on 32x32x4 latents, ours (JAX) beside diffusers (PyTorch).

    python benchmarks/train_bench.py [--steps 10] [--batch 32]
    python benchmarks/train_bench.py --mfu [--model DiT-XL/2 --batch 256 --remat dots]
    python benchmarks/train_bench.py --memory [--model DiT-XL/2 --batch 256]
    python benchmarks/train_bench.py --peer PATH/TO/DiT [--model DiT-XL/2 --batch 128]

--mfu times only ours, in bfloat16, and prints the model FLOPs utilisation: XLA's FLOP count
of one forward pass, times 3 for forward and backward, per second, over the accelerator's
dense bfloat16 peak (a table of known devices, or --peak_tflops). --memory compiles (never
runs) the bfloat16 step once per rematerialisation policy and prints XLA's memory plan: what the
step needs on the device, before allocating anything. --peer times ours in bfloat16 beside the
official DiT code (a local checkout of facebookresearch/DiT: its models.py and diffusion/, which
need torch and timm) on the same device, eager and under torch.compile, each in a child process,
with bfloat16 autocast on a GPU as its train.py would; the harness around its model (AdamW, the
diffusion loss of its `create_diffusion().training_losses`, an EMA lerp) is the same step as
ours. It prints steps/s, the ratios and the peak device memory of each.

Both sides run a full step as DiT trains: forward, the diffusion loss, backward, AdamW and the
EMA update. Ours also computes the vb term (strictly more work). Both processes run with the
allocator settings of gadc_jax/host.py (main.py applies them to every job); on the CPU they
take ~15% off our step and ~5% off PyTorch's. Timings exclude compilation / warm-up. The
PyTorch side needs the test requirements (torch, diffusers) and runs in a child process (torch
imported into a process where XLA has run crashes here); without them only ours is printed.
The last line is one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from gadc_jax import host  # pylint: disable=g-import-not-at-top


# Dense bfloat16 peaks in TFLOP/s, by jax device_kind.
PEAK_BF16_TFLOPS = {'NVIDIA H100 80GB HBM3': 989.0, 'NVIDIA H200': 989.0,
                    'NVIDIA A100-SXM4-80GB': 312.0, 'NVIDIA A100-SXM4-40GB': 312.0,
                    'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5p': 459.0}


def _train_step(batch: int, model_name: str, bfloat16: bool, remat: str,
                attention: str = 'auto'):
  """(jitted train step, abstract state, abstract batch, model) of our DiT train step on
  32x32x4 latents; nothing is allocated."""
  host.configure_cpu_runtime()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gadc_jax import defaults  # pylint: disable=g-import-not-at-top
  from gadc_jax import generator  # pylint: disable=g-import-not-at-top
  from gadc_jax.diffusion import gaussian  # pylint: disable=g-import-not-at-top
  from gadc_jax.training import loss  # pylint: disable=g-import-not-at-top
  from gadc_jax.training import train_state  # pylint: disable=g-import-not-at-top
  cfg = defaults.train()
  cfg.model_overrides = ml_collections.ConfigDict()
  cfg.model, cfg.bfloat16, cfg.remat, cfg.attention = model_name, bfloat16, remat, attention
  model = generator.build_model(cfg, 1000)
  tx = train_state.optimizer(cfg.learning_rate, cfg.weight_decay)
  mesh = train_state.make_mesh()
  init = lambda: train_state.create(
      generator.init_params(model, jax.random.PRNGKey(0), (32, 32, 4)), tx)
  shardings = train_state.param_sharding(mesh, jax.eval_shape(init))
  step = train_state.make_train_step(
      loss.make_loss_fn(model, cfg, gaussian.create_diffusion(), None), tx, cfg.ema_decay,
      mesh, shardings)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       jax.eval_shape(init), shardings)
  data = {'x': jax.ShapeDtypeStruct((batch, 32, 32, 4), jnp.float32,
                                    sharding=train_state.batch_sharding(mesh)),
          'y': jax.ShapeDtypeStruct((batch,), jnp.int32,
                                    sharding=train_state.batch_sharding(mesh))}
  return step, (jax.jit(init, out_shardings=shardings), state, data), model


def ours(batch: int, steps: int, model_name: str = 'DiT-S/2', bfloat16: bool = False,
         remat: str = 'none', attention: str = 'auto') -> tuple[float, float]:
  """(steps per second, forward FLOPs per image by XLA's count) of our train step."""
  step, (init, _, abstract_data), model = _train_step(batch, model_name, bfloat16, remat,
                                                      attention)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  state = init()
  rng = np.random.default_rng(0)
  data = {'x': rng.standard_normal((batch, 32, 32, 4)).astype(np.float32),
          'y': rng.integers(0, 1000, batch).astype(np.int32)}
  data = jax.device_put(data, {k: v.sharding for k, v in abstract_data.items()})
  key = jax.random.PRNGKey(1)
  forward = jax.jit(lambda p, x, y: model.apply(p, x, jnp.zeros(x.shape[:1]), y, train=False))
  flops = forward.lower(state.params, data['x'][:1], data['y'][:1]).compile().cost_analysis()
  state, m = step(state, data, key)  # compile
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, data, key)
  jax.block_until_ready(m)
  return steps / (time.perf_counter() - t0), float(flops['flops'])


def memory(args) -> None:
  """XLA's memory plan of one bfloat16 train step per remat policy, compiled, never run."""
  import jax  # pylint: disable=g-import-not-at-top
  from gadc_jax.models import dit  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0].device_kind
  print(f'{args.model} bfloat16 train step, 32x32x4 latents, batch {args.batch}, '
        f'{jax.device_count()} x {device}: XLA memory plan (GiB)')
  print(f'{"remat":<8}{"arguments":>10}{"outputs":>10}{"temporaries":>13}{"peak":>8}')
  plans = {}
  for remat in dit.REMAT_POLICIES:
    step, (_, state, data), _ = _train_step(args.batch, args.model, True, remat)
    plan = step.lower(state, data, jax.random.PRNGKey(1)).compile().memory_analysis()
    # The state is donated, so outputs alias arguments: the peak is arguments + temporaries.
    gib = {'arguments': plan.argument_size_in_bytes / 2**30,
           'outputs': plan.output_size_in_bytes / 2**30,
           'temporaries': plan.temp_size_in_bytes / 2**30}
    gib['peak'] = gib['arguments'] + gib['temporaries']
    plans[remat] = gib
    print(f'{remat:<8}{gib["arguments"]:10.2f}{gib["outputs"]:10.2f}{gib["temporaries"]:13.2f}'
          f'{gib["peak"]:8.2f}')
  print(json.dumps({'device': device, 'model': args.model, 'batch': args.batch,
                    'memory_gib': plans}))


def _in_child(flags: list[str]):
  """The JSON last line of this script run with `flags` in a child process (torch and XLA
  crash in one process here), or None if it failed."""
  result = subprocess.run([sys.executable, __file__] + flags, capture_output=True, text=True)
  if result.returncode:
    print(result.stderr[-2000:], file=sys.stderr)
    return None
  return json.loads(result.stdout.splitlines()[-1])


def theirs_in_child(batch: int, steps: int) -> float | None:
  return _in_child(['--torch', f'--batch={batch}', f'--steps={steps}'])


def peak_device_bytes() -> int | None:
  """Peak bytes allocated on the first device so far (None where the backend keeps no count,
  as on the CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def peer_step(repo: str, model_name: str, batch: int, steps: int, compiled: bool) -> dict:
  """Steps/s and peak device bytes of the official DiT's train step (its models.py and
  diffusion loss, from the checkout `repo`), bfloat16 autocast on a GPU, float32 on a CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.abspath(repo))
  from diffusion import create_diffusion  # pylint: disable=g-import-not-at-top,import-error
  from models import DiT_models  # pylint: disable=g-import-not-at-top,import-error
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  model = DiT_models[model_name](input_size=32, num_classes=1000).to(device)
  ema = [p.detach().clone() for p in model.parameters()]
  params = list(model.parameters())
  diffusion = create_diffusion(timestep_respacing='')
  opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0)
  forward = torch.compile(model) if compiled else model
  x = torch.randn(batch, 4, 32, 32, device=device)
  y = torch.randint(0, 1000, (batch,), device=device)

  def one():
    t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == 'cuda'):
      loss = diffusion.training_losses(forward, x, t, {'y': y})['loss'].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1 - 0.9999)  # pylint: disable=protected-access

  sync = torch.cuda.synchronize if device == 'cuda' else lambda: None
  for _ in range(3 if compiled else 1):  # compilation, autotuning
    one()
  sync()
  t0 = time.perf_counter()
  for _ in range(steps):
    one()
  sync()
  sps = steps / (time.perf_counter() - t0)
  peak = torch.cuda.max_memory_allocated() if device == 'cuda' else None
  return {'steps_per_s': sps, 'peak_bytes': peak, 'device': device}


def peer(args) -> None:
  """Ours in bfloat16 beside the official DiT, eager and compiled, on the same device."""
  runs = {mode: _in_child([f'--peer_child={mode}', f'--peer={args.peer}', f'--model={args.model}',
                           f'--batch={args.batch}', f'--steps={args.steps}'])
          for mode in ('eager', 'compiled')}
  host.configure_cpu_runtime()
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0].device_kind
  sps, _ = ours(args.batch, args.steps, args.model, bfloat16=True, remat=args.remat,
                attention=args.attention)
  mine = {'steps_per_s': sps, 'peak_bytes': peak_device_bytes()}
  gib = lambda b: '-' if b is None else f'{b / 2**30:.1f} GiB'
  print(f'{args.model} train step, 32x32x4 latents, batch {args.batch}, {args.steps} timed steps, '
        f'{device}')
  print(f'{"ours (JAX, bfloat16, remat " + args.remat + ")":<40}{sps:8.3f} steps/s  peak '
        f'{gib(mine["peak_bytes"])}')
  for mode, run in runs.items():
    if run is None:
      print(f'official DiT ({mode}): failed (see above)')
      continue
    print(f'{"official DiT (PyTorch, " + mode + ")":<40}{run["steps_per_s"]:8.3f} steps/s  peak '
          f'{gib(run["peak_bytes"])}  ratio ours / it {sps / run["steps_per_s"]:.2f}x')
  print(json.dumps({'device': device, 'model': args.model, 'batch': args.batch, 'ours': mine,
                    'peer': runs, 'ratio_vs_compiled': None if runs['compiled'] is None else
                    sps / runs['compiled']['steps_per_s']}))


def theirs(batch: int, steps: int) -> float | None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from diffusers import DiTTransformer2DModel  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  host.keep_freed_memory()
  torch.manual_seed(0)
  model = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4,
                                out_channels=8, num_layers=12, sample_size=32, patch_size=2,
                                num_embeds_ada_norm=1000)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  x = torch.randn(batch, 4, 32, 32)
  y = torch.randint(0, 1000, (batch,))

  def one():
    t = torch.randint(0, 1000, (batch,))
    noise = torch.randn_like(x)
    out = model(x + noise, timestep=t, class_labels=y).sample
    loss = ((out[:, :4] - noise) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1 - 0.9999)  # pylint: disable=protected-access

  one()
  t0 = time.perf_counter()
  for _ in range(steps):
    one()
  return steps / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--torch', action='store_true', help='time only the PyTorch side')
  parser.add_argument('--mfu', action='store_true',
                      help='model FLOPs utilisation of ours in bfloat16 (for an accelerator)')
  parser.add_argument('--model', default='DiT-XL/2', help='the model of --mfu')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='the device peak for --mfu; 0: from PEAK_BF16_TFLOPS')
  parser.add_argument('--remat', default='none',
                      help='the rematerialisation policy of --mfu (models/dit.py REMAT_POLICIES)')
  parser.add_argument('--attention', default='auto',
                      help='attention implementation of --mfu / --peer (ATTENTION_IMPLEMENTATIONS)')
  parser.add_argument('--memory', action='store_true',
                      help="XLA's memory plan of --model at --batch for every remat policy")
  parser.add_argument('--peer', default='',
                      help='a local checkout of the official DiT code: time it beside ours')
  parser.add_argument('--peer_child', choices=('eager', 'compiled'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch:
    print(json.dumps(theirs(args.batch, args.steps)))
    return
  if args.peer_child:
    print(json.dumps(peer_step(args.peer, args.model, args.batch, args.steps,
                               args.peer_child == 'compiled')))
    return
  if args.peer:
    peer(args)
    return
  if args.mfu:
    mfu(args)
    return
  if args.memory:
    memory(args)
    return
  torch_sps = theirs_in_child(args.batch, args.steps)
  jax_sps, _ = ours(args.batch, args.steps)
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0].device_kind
  print(f'DiT-S/2, 32x32x4 latents, batch {args.batch}, {args.steps} timed steps ({device})')
  print(f'{"ours (JAX)":<22}{jax_sps:8.3f} steps/s {jax_sps * args.batch:9.1f} images/s')
  if torch_sps is not None:
    print(f'{"diffusers (PyTorch)":<22}{torch_sps:8.3f} steps/s {torch_sps * args.batch:9.1f} '
          f'images/s')
    print(f'ratio ours / diffusers: {jax_sps / torch_sps:.2f}x')
  print(json.dumps({'device': device, 'batch': args.batch, 'jax_steps_per_s': jax_sps,
                    'torch_steps_per_s': torch_sps,
                    'ratio': None if torch_sps is None else jax_sps / torch_sps}))


def mfu(args) -> None:
  host.configure_cpu_runtime()
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0].device_kind
  peak = args.peak_tflops or PEAK_BF16_TFLOPS.get(device)
  if not peak:
    sys.exit(f'no bfloat16 peak known for {device!r}: pass --peak_tflops')
  sps, forward_flops = ours(args.batch, args.steps, args.model, bfloat16=True,
                            remat=args.remat, attention=args.attention)
  achieved = 3 * forward_flops * args.batch * sps / 1e12
  utilisation = achieved / (peak * jax.device_count())
  print(f'{args.model} bfloat16, remat {args.remat}, 32x32x4 latents, batch {args.batch}, '
        f'{args.steps} timed steps, {jax.device_count()} x {device}')
  print(f'{sps:.3f} steps/s, {sps * args.batch:.1f} images/s, {forward_flops / 1e9:.1f} GFLOP '
        f'a forward pass, {achieved:.1f} TFLOP/s: MFU {utilisation:.1%}')
  print(json.dumps({'device': device, 'model': args.model, 'batch': args.batch,
                    'remat': args.remat, 'steps_per_s': sps, 'forward_gflops': forward_flops / 1e9,
                    'mfu': utilisation}))


if __name__ == '__main__':
  main()
