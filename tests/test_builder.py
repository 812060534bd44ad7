"""IQLBuilder's pieces on their own, against a real Reverb server."""

import threading
import time

from acme import specs
from acme.utils import counting
import jax
import numpy as np
import pytest
import reverb

from iql_acme import IQLBuilder, IQLConfig, envs
from iql_acme import actors
from iql_acme import learning
from iql_acme import networks as networks_lib
from iql_acme.builder import InterruptibleIterator, samples_per_insert
from iql_acme.types import RewardTransform

from real_transitions import random_policy_transitions

ENV = 'pen-binary-v0'
BATCH = 8
OFFLINE_STEPS = 20


@pytest.fixture(scope='module')
def env():
  return envs.make_environment(ENV, seed=0)


@pytest.fixture(scope='module')
def spec(env):
  return specs.make_environment_spec(env)


@pytest.fixture(scope='module')
def offline_data():
  return random_policy_transitions(ENV, episodes=2)


def make_builder(offline_data, **overrides):
  overrides.setdefault('num_sgd_steps_per_step', 1)
  config = IQLConfig(batch_size=BATCH, offline_steps=OFFLINE_STEPS,
                     offline_steps_per_call=10, hidden_dims=(32, 32),
                     **overrides)
  transform = RewardTransform(scale=2.0, shift=-1.0)
  return IQLBuilder(config, lambda: (offline_data, transform)), transform


class FakeLearner:
  """A variable source whose learner_steps a test advances by hand."""

  def __init__(self, params):
    self.steps, self.params = 0, params

  def get_variables(self, names):
    values = {'learner_steps': np.asarray(self.steps), 'policy': self.params}
    return [values[n] for n in names]


class RecordingAdder:
  """Records when the actor first hands it data."""

  def __init__(self, source):
    self.source, self.calls = source, []

  def add_first(self, timestep):
    self.calls.append(('first', self.source.steps))

  def add(self, action, next_timestep, extras=()):
    self.calls.append(('add', self.source.steps))

  def reset(self):
    pass


def test_replay_table_paces_updates_to_env_steps(offline_data, spec):
  builder, _ = make_builder(offline_data, updates_per_env_step=2.0)
  (table,) = builder.make_replay_tables(spec)
  server = reverb.Server([table])
  try:
    info = server.localhost_client().server_info()[builder.config.replay_table_name]
    limiter = info.rate_limiter_info
    # Every update draws a batch; so samples per insert = batch * ratio.
    assert limiter.samples_per_insert == pytest.approx(BATCH * 2.0)
    assert samples_per_insert(builder.config) == BATCH * 2.0
    assert limiter.max_diff - limiter.min_diff >= 2 * BATCH * 2.0
    assert info.max_size == builder.config.max_replay_size
  finally:
    server.stop()


def test_actors_block_when_ahead_of_the_learner(offline_data, spec, env):
  tolerance = 5
  builder, _ = make_builder(offline_data, rate_limit_tolerance_steps=tolerance)
  server = reverb.Server(builder.make_replay_tables(spec))
  client = server.localhost_client()
  table = builder.config.replay_table_name
  inserted = []
  try:
    adder = builder.make_adder(client)

    def act(num_steps):
      timestep = env.reset()
      adder.add_first(timestep)
      for _ in range(num_steps):
        action = np.zeros(spec.actions.shape, np.float32)
        adder.add(action, env.step(action))
        inserted.append(1)
    actor = threading.Thread(target=act, args=(60,), daemon=True)
    actor.start()
    actor.join(timeout=3.0)
    # Without updates, the actor stalls a few steps past the tolerance.
    assert actor.is_alive()
    stalled_at = client.server_info()[table].current_size
    assert tolerance <= stalled_at <= 3 * tolerance
    iterator = builder.make_dataset_iterator(client)
    for _ in range(60):  # One update per env step lets it finish.
      next(iterator)
      if not actor.is_alive():
        break
    actor.join(timeout=10.0)
    assert not actor.is_alive() and len(inserted) == 60
  finally:
    server.stop()


def test_adder_and_iterator_round_trip_with_time_limit_mask(
    offline_data, spec, env):
  # A wide tolerance so a whole episode goes in before any update.
  builder, transform = make_builder(offline_data,
                                    rate_limit_tolerance_steps=200)
  server = reverb.Server(builder.make_replay_tables(spec))
  client = server.localhost_client()
  try:
    adder = builder.make_adder(client)
    timestep = env.reset()
    adder.add_first(timestep)
    rewards = []
    while not timestep.last():  # A full 100-step episode cut by the limit.
      action = np.zeros(spec.actions.shape, np.float32)
      timestep = env.step(action)
      adder.add(action, timestep)
      rewards.append(timestep.reward)
    table = builder.config.replay_table_name
    assert client.server_info()[table].current_size == len(rewards) == 100
    sample = next(builder.make_dataset_iterator(client))
    assert sample.data.shape == (BATCH, 2 * 45 + 24 + 2)  # One row each.
    data = learning.split_transition_rows(sample.data, obs_dim=45)
    assert data.observation.shape == (BATCH, 45)
    assert data.action.shape == (BATCH, 24)
    # The time-limit cut is not a terminal: every stored discount is 1.
    np.testing.assert_array_equal(data.discount, np.ones(BATCH))
    assert set(np.unique(data.reward)) <= {0.0, -1.0}  # Raw env rewards.
    online = learning.transitions_from_replay(sample.data, transform, 45)
    np.testing.assert_allclose(online.rewards, 2.0 * data.reward - 1.0)
    np.testing.assert_array_equal(online.observations, data.observation)
  finally:
    server.stop()


def test_adder_rows_are_the_environment_transitions(offline_data, spec, env):
  """Every replay row is one (s, a, r, discount, s') of one episode."""
  builder, _ = make_builder(offline_data, rate_limit_tolerance_steps=300)
  server = reverb.Server(builder.make_replay_tables(spec))
  client = server.localhost_client()
  rng = np.random.default_rng(0)
  expected = set()
  try:
    adder = builder.make_adder(client)
    for steps in (100, 7):  # A whole episode (time-limit cut), then a part.
      timestep = env.reset()
      adder.add_first(timestep)
      for _ in range(steps):
        action = rng.uniform(-1, 1, spec.actions.shape).astype(np.float32)
        observation, timestep = timestep.observation, env.step(action)
        adder.add(action, timestep)
        expected.add(np.concatenate([
            observation, action, [timestep.reward, timestep.discount],
            timestep.observation]).astype(np.float32).tobytes())
    adder.reset()
    table = builder.config.replay_table_name
    assert client.server_info()[table].current_size == 107
    iterator = builder.make_dataset_iterator(client)
    sampled = np.concatenate([next(iterator).data for _ in range(20)])
    assert {row.tobytes() for row in sampled} <= expected
  finally:
    server.stop()


def test_numpy_actor_matches_the_jax_policy(offline_data, spec, env):
  builder, _ = make_builder(offline_data, exploration_noise=0.0)
  networks = networks_lib.make_networks(spec, builder.config)
  params = networks.init(jax.random.PRNGKey(0))[0]
  source = FakeLearner(params)
  source.steps = OFFLINE_STEPS
  actor = actors.make_numpy_actor(builder.config, networks,
                                  jax.random.PRNGKey(1), source,
                                  RecordingAdder(source))
  timestep = env.reset()
  actor.observe_first(timestep)
  got = actor.select_action(timestep.observation)
  want = networks_lib.make_evaluation_policy(networks)(
      params, jax.random.PRNGKey(0), timestep.observation[None])[0]
  assert got.dtype == np.float32 and got.shape == spec.actions.shape
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
  noisy = actors.make_numpy_actor(
      IQLConfig(hidden_dims=(32, 32), exploration_noise=0.03), networks,
      jax.random.PRNGKey(1), source, None)
  noisy.observe_first(timestep)
  noise = np.stack([noisy.select_action(timestep.observation) - got
                    for _ in range(2000)])
  interior = np.abs(got) < 0.9  # Away from the clipping bounds.
  assert abs(noise[:, interior].std() - 0.03) < 0.003
  assert abs(noise[:, interior].mean()) < 0.003


def test_recording_actor_waits_for_offline_phase(offline_data, spec, env):
  builder, _ = make_builder(offline_data)
  networks = networks_lib.make_networks(spec, builder.config)
  params = networks.init(jax.random.PRNGKey(0))[0]
  source = FakeLearner(params)
  adder = RecordingAdder(source)
  actor = builder.make_actor(
      jax.random.PRNGKey(1),
      networks_lib.make_behaviour_policy(networks, builder.config),
      adder, source)

  def finish_offline_phase():
    time.sleep(1.0)
    source.steps = OFFLINE_STEPS
  threading.Thread(target=finish_offline_phase).start()
  start = time.time()
  timestep = env.reset()
  actor.observe_first(timestep)
  action = actor.select_action(timestep.observation)
  actor.observe(action, env.step(action))
  assert time.time() - start >= 0.9  # It really blocked.
  assert actor.learner_steps_at_first_action == OFFLINE_STEPS
  # Nothing reached the adder before the offline phase ended.
  assert adder.calls and all(steps >= OFFLINE_STEPS for _, steps in adder.calls)
  assert np.all(np.abs(action) <= 1.0)


def test_evaluation_actor_acts_during_offline_phase(offline_data, spec, env):
  builder, _ = make_builder(offline_data)
  networks = networks_lib.make_networks(spec, builder.config)
  source = FakeLearner(networks.init(jax.random.PRNGKey(0))[0])
  actor = builder.make_actor(jax.random.PRNGKey(1),
                             networks_lib.make_evaluation_policy(networks),
                             None, source)
  timestep = env.reset()
  actor.observe_first(timestep)  # Does not wait: learner_steps is 0.
  first = actor.select_action(timestep.observation)
  second = actor.select_action(timestep.observation)
  np.testing.assert_array_equal(first, second)  # Deterministic mean.


def test_behaviour_policy_adds_clipped_gaussian_noise(offline_data, spec):
  config = IQLConfig(hidden_dims=(32, 32), exploration_noise=0.03)
  networks = networks_lib.make_networks(spec, config)
  params = networks.init(jax.random.PRNGKey(0))[0]
  obs = np.zeros((4096, 45), np.float32)
  mean = networks_lib.make_evaluation_policy(networks)(
      params, jax.random.PRNGKey(0), obs)
  noisy = networks_lib.make_behaviour_policy(networks, config)(
      params, jax.random.PRNGKey(1), obs)
  interior = np.abs(np.asarray(mean)) < 0.9  # Away from the clipping bounds.
  noise = np.asarray(noisy - mean)[interior]
  assert abs(noise.std() - 0.03) < 0.003
  assert abs(noise.mean()) < 0.003
  big = networks_lib.apply_policy_and_sample(networks, 10.0)(
      params, jax.random.PRNGKey(2), obs)
  assert np.all(np.abs(np.asarray(big)) <= 1.0)  # Clipped to the bounds.


def test_learner_trains_offline_then_online_from_replay(
    offline_data, spec, env):
  sgd_steps = 2  # Online updates per learner step, from one Reverb fetch.
  builder, _ = make_builder(offline_data, num_sgd_steps_per_step=sgd_steps)
  server = reverb.Server(builder.make_replay_tables(spec))
  client = server.localhost_client()
  try:
    networks = networks_lib.make_networks(spec, builder.config)
    learner = builder.make_learner(jax.random.PRNGKey(0), networks,
                                   builder.make_dataset_iterator(client),
                                   client)
    while learner.in_offline_phase:
      learner.step()
    assert learner.steps == OFFLINE_STEPS
    adder = builder.make_adder(client)
    timestep = env.reset()
    adder.add_first(timestep)
    for _ in range(10):
      action = np.zeros(spec.actions.shape, np.float32)
      timestep = env.step(action)
      adder.add(action, timestep)
    for _ in range(5):
      learner.step()
    assert learner.steps == OFFLINE_STEPS + 5 * sgd_steps
  finally:
    server.stop()


def test_interruptible_iterator_passes_items_and_errors():
  def items():
    yield 1
    yield 2
    raise ValueError('boom')
  iterator = InterruptibleIterator(items(), poll_s=0.01)
  assert [next(iterator), next(iterator)] == [1, 2]
  with pytest.raises(ValueError, match='boom'):
    next(iterator)
  with pytest.raises(ValueError, match='boom'):
    next(iterator)


def test_acme_local_layout_runs_offline_then_online(offline_data, spec):
  """IQLBuilder in Acme 0.4.0's single-process LocalLayout."""
  from acme import environment_loop  # pylint: disable=g-import-not-at-top
  from acme.jax.layouts import local_layout  # pylint: disable=g-import-not-at-top
  builder, _ = make_builder(offline_data)
  networks = networks_lib.make_networks(spec, builder.config)
  agent = local_layout.LocalLayout(
      seed=0, environment_spec=spec, builder=builder, networks=networks,
      policy_network=networks_lib.make_behaviour_policy(networks,
                                                        builder.config),
      batch_size=BATCH, samples_per_insert=BATCH, min_replay_size=1,
      num_sgd_steps_per_step=builder.config.num_sgd_steps_per_step,
      checkpoint=False)
  counter = counting.Counter()
  loop = environment_loop.EnvironmentLoop(
      envs.make_environment(ENV, seed=3), agent, counter=counter,
      logger=FakeLogger())
  loop.run(num_steps=150)  # Acme finishes the episode: 200 steps.
  env_steps = counter.get_counts()['steps']
  learner = agent._learner  # pylint: disable=protected-access
  # The whole offline phase ran before the first action, then one update per
  # environment step once Acme's Agent has its first batch of observations.
  assert agent._actor.learner_steps_at_first_action == OFFLINE_STEPS  # pylint: disable=protected-access
  online_updates = learner.steps - OFFLINE_STEPS
  assert env_steps - BATCH <= online_updates <= env_steps


class FakeLogger:

  def write(self, values):
    pass

  def close(self):
    pass
