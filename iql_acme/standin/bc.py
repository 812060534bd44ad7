"""Behaviour cloning: a small tanh MLP fitted to demonstrations by MSE.

Mimics the BC policy AWAC rolled out (with noise) to make its
`*_bc_sparse4.npy` files. Training uses JAX/optax; the trained policy is a
numpy function, so rolling it out needs no per-step device dispatch.
"""

import dataclasses
from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iql_acme import evaluation

_STD_FLOOR = 1e-3  # observation dims that never vary are left unscaled


@dataclasses.dataclass
class BCConfig:
  hidden_sizes: Sequence[int] = (256, 256)
  learning_rate: float = 1e-3
  batch_size: int = 256
  num_steps: int = 3000
  weight_decay: float = 1e-4
  # Std of Gaussian noise added to the standardised inputs of each batch
  # (a cheap robustness augmentation; 0 switches it off).
  input_noise: float = 0.0


def _init_params(key, sizes: Sequence[int]) -> list:
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    scale = np.sqrt(2.0 / fan_in)
    params.append({'w': jax.random.normal(sub, (fan_in, fan_out)) * scale,
                   'b': jnp.zeros(fan_out)})
  return params


def _forward(params, x, xp=jnp):
  for layer in params[:-1]:
    x = xp.maximum(x @ layer['w'] + layer['b'], 0.0)
  return xp.tanh(x @ params[-1]['w'] + params[-1]['b'])


def fit_bc(observations: np.ndarray, actions: np.ndarray, config: BCConfig,
           seed: int = 0, log_every: int = 1000,
           log_fn: Callable[[str], None] = print) -> Dict[str, np.ndarray]:
  """Fits the policy; returns its numpy parameters (see `bc_policy`)."""
  observations = np.asarray(observations, np.float32)
  actions = np.clip(np.asarray(actions, np.float32), -1.0, 1.0)
  mean = observations.mean(0)
  std = np.maximum(observations.std(0), _STD_FLOOR)
  inputs = (observations - mean) / std
  sizes = [inputs.shape[1], *config.hidden_sizes, actions.shape[1]]
  params = _init_params(jax.random.PRNGKey(seed), sizes)
  optimizer = optax.adamw(config.learning_rate,
                          weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def update(params, opt_state, x, y):
    def loss_fn(p):
      return jnp.mean(jnp.square(_forward(p, x) - y))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  for step in range(1, config.num_steps + 1):
    index = rng.integers(0, len(inputs), config.batch_size)
    batch = inputs[index]
    if config.input_noise:
      batch = batch + rng.normal(0.0, config.input_noise,
                                 batch.shape).astype(np.float32)
    params, opt_state, loss = update(params, opt_state, batch,
                                     actions[index])
    if step % log_every == 0 or step == config.num_steps:
      log_fn(f'bc step {step}/{config.num_steps} mse {float(loss):.4f}')
  flat = {'obs_mean': mean, 'obs_std': std}
  for i, layer in enumerate(params):
    flat[f'w{i}'] = np.asarray(layer['w'])
    flat[f'b{i}'] = np.asarray(layer['b'])
  return flat


def bc_policy(params: Dict[str, np.ndarray]) -> Callable[[np.ndarray],
                                                         np.ndarray]:
  """The deterministic numpy policy obs [..., obs_dim] -> action in [-1, 1]."""
  num_layers = sum(1 for name in params if name.startswith('w'))
  layers = [{'w': params[f'w{i}'], 'b': params[f'b{i}']}
            for i in range(num_layers)]
  mean, std = params['obs_mean'], params['obs_std']

  def policy(observation: np.ndarray) -> np.ndarray:
    x = (np.asarray(observation, np.float32) - mean) / std
    return _forward(layers, x, xp=np)

  return policy


def gated_fits(inputs: np.ndarray, targets: np.ndarray, config: BCConfig,
               seeds: Sequence[int],
               evaluate: Callable[[Callable[[np.ndarray], np.ndarray]], dict],
               threshold: float, what: str,
               log_fn: Callable[[str], None] = print):
  """One BC fit per seed, each scored by `evaluate(policy)`; the gate.

  The gate takes the mean success over fits: a single fit moves by about 10
  points with its seed alone (experiments/pen_bc_sweep.py). Returns (the
  first fit's parameters, per-fit results, the gate's dict, passed).
  """
  fits, first = [], None
  for seed in seeds:
    fitted = fit_bc(inputs, targets, config, seed=seed, log_fn=lambda _: None)
    first = fitted if first is None else first
    fits.append({'bc_seed': seed, **evaluate(bc_policy(fitted))})
    log_fn(f'BC (seed {seed}) on {what}: success '
           f'{fits[-1]["success_rate"]:.2f} +- '
           f'{fits[-1]["standard_error"]:.2f} over {fits[-1]["episodes"]} '
           'fresh targets')
  rates = [f['success_rate'] for f in fits]
  gate = {'success_rate': float(np.mean(rates)),
          'standard_error': evaluation.standard_error(rates),
          'fits': len(fits)}
  passed = gate['success_rate'] >= threshold
  log_fn(f'BC on {what}, mean of {len(fits)} fits: '
         f'{gate["success_rate"]:.2f} +- {gate["standard_error"]:.2f} (gate '
         f'{threshold}: {"passed" if passed else "failed"})')
  return first, fits, gate, passed
