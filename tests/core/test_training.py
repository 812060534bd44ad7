"""The IQL core's training loops: scan, vmapped seeds, state save/load.

Core test: runs in .venv (JAX 0.4.30) and in .venv-core (newest JAX).
"""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from iql_acme import networks as iql_networks
from iql_acme import training
from iql_acme.config import IQLConfig
from iql_acme.types import Transitions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OBS_DIM, ACT_DIM = 4, 3
HIDDEN = (16, 16)
BATCH = 16
DATASET_SIZE = 200
NUM_UPDATES = 6
# Policy dropout on: its key comes from the state, so a seed mix-up in the
# vmapped run changes the policy too.
CONFIG = IQLConfig(hidden_dims=HIDDEN, batch_size=BATCH, offline_steps=10,
                   policy_dropout_rate=0.1)
# vmap batches the matmuls differently from a single run: equal up to float32
# rounding, not bitwise.
RTOL, ATOL = 1e-5, 1e-6
CORE_MODULES = ('iql_acme.training', 'iql_acme.networks', 'iql_acme.losses',
                'iql_acme.config', 'iql_acme.types')
STACK_2022 = ('acme', 'reverb', 'tensorflow', 'launchpad', 'dm_env',
              'tensorflow_probability', 'haiku', 'rlax', 'gym')


def _dataset(seed=0, size=DATASET_SIZE):
  rng = np.random.default_rng(seed)
  return Transitions(
      observations=rng.standard_normal((size, OBS_DIM)).astype(np.float32),
      actions=rng.uniform(-0.9, 0.9, (size, ACT_DIM)).astype(np.float32),
      rewards=rng.standard_normal(size).astype(np.float32),
      discounts=(rng.random(size) > 0.1).astype(np.float32),
      next_observations=rng.standard_normal((size, OBS_DIM)).astype(np.float32),
      episode_ends=np.zeros(size, bool))


def _setup():
  networks = iql_networks.make_networks(
      iql_networks.spec_from_dims(OBS_DIM, ACT_DIM), CONFIG)
  return networks, training.make_optimizers(CONFIG)


@pytest.fixture(scope='module')
def core():
  """Networks, optimizers, the on-device dataset and the jitted single-seed
  scan, built once: compiling dominates these tests' time."""
  networks, optimizers = _setup()
  steps = training.jit_offline_steps(
      training.make_offline_steps(networks, CONFIG, optimizers))
  return types.SimpleNamespace(networks=networks, optimizers=optimizers,
                               data=training.device_dataset(_dataset()),
                               steps=steps)


def _assert_trees_close(a, b, **kwargs):
  a_leaves, b_leaves = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(a_leaves) == len(b_leaves)
  for x, y in zip(a_leaves, b_leaves):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kwargs)


def _single_seed_run(core, seed, num_updates=NUM_UPDATES):
  state = training.init_training_state(core.networks, core.optimizers,
                                       jax.random.PRNGKey(seed))
  return core.steps(state, core.data, num_updates)


def test_core_imports_nothing_of_the_2022_stack():
  code = ('import json, sys\n'
          + ''.join(f'import {m}\n' for m in CORE_MODULES)
          + 'print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          capture_output=True, text=True, check=True,
                          env={**os.environ, 'PYTHONPATH': REPO})
  imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
  assert 'jax' in imported and 'flax' in imported
  assert not imported & set(STACK_2022), imported & set(STACK_2022)


@pytest.mark.parametrize('vectorize', [True, False])  # vmap, lax.map
def test_multi_seed_runs_equal_single_seed_runs(core, vectorize):
  seeds = [0, 3, 5]
  multi_steps = training.make_multi_seed_steps(core.networks, CONFIG,
                                               core.optimizers, vectorize)
  states = training.init_training_states(core.networks, core.optimizers,
                                         training.seed_keys(seeds))
  states, metrics = multi_steps(states, core.data, NUM_UPDATES)
  assert metrics['critic_loss'].shape == (len(seeds),)
  np.testing.assert_array_equal(states.steps, [NUM_UPDATES] * len(seeds))
  for index, seed in enumerate(seeds):
    single, single_metrics = _single_seed_run(core, seed)
    _assert_trees_close(training.select_seed(states, index), single,
                        rtol=RTOL, atol=ATOL)
    _assert_trees_close({k: v[index] for k, v in metrics.items()},
                        single_metrics, rtol=RTOL, atol=ATOL)
  # Independent seeds: different initial parameters, different batches.
  first, second = (jax.tree_util.tree_leaves(
      training.select_seed(states, i).policy_params) for i in (0, 1))
  assert not all(np.allclose(x, y) for x, y in zip(first, second))


def test_scan_equals_update_steps_on_the_same_sampled_batches(core):
  scanned, _ = _single_seed_run(core, seed=2)
  update = jax.jit(training.make_update_step(core.networks, CONFIG,
                                             core.optimizers))
  state = training.init_training_state(core.networks, core.optimizers,
                                       jax.random.PRNGKey(2))
  for _ in range(NUM_UPDATES):
    key, sample_key = jax.random.split(state.key)
    batch = training.sample_transitions(sample_key, core.data, BATCH)
    state, _ = update(state._replace(key=key), batch)
  _assert_trees_close(scanned, state, rtol=RTOL, atol=ATOL)


def test_save_and_load_state_resume_the_same_run(core, tmp_path):
  state, _ = _single_seed_run(core, seed=0)
  path = str(tmp_path / 'state.msgpack')
  training.save_state(path, state)
  # The template only gives the structure: another seed's fresh state.
  template = training.init_training_state(core.networks, core.optimizers,
                                          jax.random.PRNGKey(1))
  loaded = training.load_state(path, template)
  assert isinstance(loaded, training.TrainingState)
  assert int(loaded.steps) == NUM_UPDATES
  _assert_trees_close(loaded, state, rtol=0, atol=0)
  # Both continue identically (the input state is donated: copy first).
  resumed, _ = core.steps(jax.device_put(loaded), core.data, NUM_UPDATES)
  continued, _ = core.steps(jax.tree_util.tree_map(np.asarray, state),
                            core.data, NUM_UPDATES)
  _assert_trees_close(resumed, continued, rtol=0, atol=0)


@pytest.mark.parametrize('make_spec', [
    lambda: iql_networks.spec_from_dims(OBS_DIM, ACT_DIM, -2.0, 0.5),
    # Any object shaped like acme.specs.EnvironmentSpec.
    lambda: types.SimpleNamespace(
        observations=types.SimpleNamespace(shape=(2, OBS_DIM // 2)),
        actions=types.SimpleNamespace(shape=(ACT_DIM,), minimum=-2.0,
                                      maximum=np.full(ACT_DIM, 0.5))),
])
def test_make_networks_takes_a_duck_typed_spec(make_spec):
  networks = iql_networks.make_networks(make_spec(), CONFIG)
  np.testing.assert_array_equal(networks.action_minimum, [-2.0] * ACT_DIM)
  np.testing.assert_array_equal(networks.action_maximum, [0.5] * ACT_DIM)
  policy_params, critic_params, _ = networks.init(jax.random.PRNGKey(0))
  observations = np.zeros((5, OBS_DIM), np.float32)
  mean, _ = networks.policy.apply(policy_params, observations)
  assert mean.shape == (5, ACT_DIM)
  q1, _ = networks.critic.apply(critic_params, observations,
                                np.zeros((5, ACT_DIM), np.float32))
  assert q1.shape == (5,)
  # The evaluation policy clips to the spec's bounds.
  act = iql_networks.make_evaluation_policy(networks)
  big = jax.tree_util.tree_map(lambda x: x * 0 + 10.0, policy_params)
  action = act(big, jax.random.PRNGKey(0), observations)
  assert float(action.max()) <= 0.5 and float(action.min()) >= -2.0


def test_device_dataset_lives_on_the_first_device():
  data = training.device_dataset(_dataset(size=10))
  for array in data:
    assert array.devices() == {jax.devices()[0]}
  assert data.observations.dtype == np.float32


def test_append_transitions_wraps_and_drops_padding():
  buffer = training.empty_transitions(5, OBS_DIM, ACT_DIM)
  new = training.device_dataset(_dataset(seed=1, size=4))
  # Three real rows (one padding) at slot 3 of 5: slots 3, 4, then 0.
  buffer = training.append_transitions(buffer, new, np.int32(3), np.int32(3))
  got = np.asarray(buffer.observations)
  np.testing.assert_array_equal(got[[3, 4, 0]], np.asarray(new.observations)[:3])
  np.testing.assert_array_equal(got[[1, 2]], 0.0)  # Padding went nowhere.
  np.testing.assert_array_equal(np.asarray(buffer.rewards)[[3, 4, 0]],
                                np.asarray(new.rewards)[:3])


def test_online_steps_equal_update_steps_on_the_same_mixed_batches(core):
  """A traced count of updates; each on offline + online rows mixed."""
  online_steps = jax.jit(training.make_online_steps(core.networks, CONFIG,
                                                    core.optimizers))
  online = training.device_dataset(_dataset(seed=3, size=10))
  num_online = 7  # Rows past 7 are never sampled.
  start = training.init_training_state(core.networks, core.optimizers,
                                       jax.random.PRNGKey(4))
  got, metrics = online_steps(start, core.data, online, np.int32(num_online),
                              np.int32(3))
  update = jax.jit(training.make_update_step(core.networks, CONFIG,
                                             core.optimizers))
  state = start
  prob = num_online / (num_online + DATASET_SIZE)
  for _ in range(3):
    key, offline_key, online_key, mix_key = jax.random.split(state.key, 4)
    offline = training.sample_transitions(offline_key, core.data, BATCH)
    idx = jax.random.randint(online_key, (BATCH,), 0, num_online)
    assert int(idx.max()) < num_online
    batch, _ = training.mix_batches(
        mix_key, offline, jax.tree_util.tree_map(lambda x: x[idx], online),
        prob, None)
    state, _ = update(state._replace(key=key), batch)
  _assert_trees_close(got, state, rtol=RTOL, atol=ATOL)
  assert int(got.steps) == 3 and 0.0 <= float(metrics['online_fraction']) <= 1
  # Zero updates: the state comes back as it was.
  same, _ = online_steps(start, core.data, online, np.int32(num_online),
                         np.int32(0))
  _assert_trees_close(same, start)
