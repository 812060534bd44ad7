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
from iql_acme.builder import queue_table_name
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


def test_replay_tables_pace_updates_to_env_steps(offline_data, spec):
  builder, _ = make_builder(offline_data, updates_per_env_step=2.0,
                            rate_limit_tolerance_steps=10)
  server = reverb.Server(builder.make_replay_tables(spec))
  try:
    info = server.localhost_client().server_info()
    replay = info[builder.config.replay_table_name]
    queue = info[queue_table_name(builder.config)]
    # Replay keeps every transition (FIFO at max_replay_size), never blocks.
    assert replay.max_size == builder.config.max_replay_size
    assert replay.rate_limiter_info.min_size_to_sample == 1
    # The queue: each transition taken once, in order; at 2 updates per
    # step, 10 updates of slack are 5 transitions, then inserts block.
    assert queue.max_times_sampled == 1
    assert queue.sampler_options.fifo and queue.remover_options.fifo
    assert queue.max_size == learning.replay_queue_size(builder.config) == 5
    assert queue.rate_limiter_info.max_diff == 5
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
    # Nobody takes from the queue: the actor stalls at the tolerance (plus
    # the inserts its writer may have in flight).
    assert actor.is_alive()
    stalled_at = client.server_info()[table].current_size
    assert tolerance <= stalled_at <= 3 * tolerance
    iterator = builder.make_dataset_iterator(client)
    taken, deadline = 0, time.time() + 30.0
    # The learner taking rows lets it go on; the last few inserts it left
    # in flight (MAX_IN_FLIGHT_ITEMS) arrive as the queue makes room.
    while taken < 60 and time.time() < deadline:
      rows = next(iterator)
      assert len(rows) <= tolerance
      taken += len(rows)
      time.sleep(0.01)
    actor.join(timeout=10.0)
    assert not actor.is_alive() and len(inserted) == 60
    assert taken == 60 and client.server_info()[table].current_size == 60
    assert len(next(iterator)) == 0
  finally:
    server.stop()


def _episode_rows(env, spec, adder, steps, rng=None):
  """Acts `steps` steps (zero or random actions); the rows they should give."""
  timestep = env.reset()
  adder.add_first(timestep)
  rows = []
  for _ in range(steps):
    action = (np.zeros(spec.actions.shape, np.float32) if rng is None else
              rng.uniform(-1, 1, spec.actions.shape).astype(np.float32))
    observation, timestep = timestep.observation, env.step(action)
    adder.add(action, timestep)
    rows.append(learning.transition_row(observation, action, timestep.reward,
                                        timestep.discount,
                                        timestep.observation))
    if timestep.last():
      break
  return np.stack(rows)


def test_adder_and_queue_round_trip_with_time_limit_mask(
    offline_data, spec, env):
  # A wide tolerance so a whole episode goes in before the learner takes any.
  builder, transform = make_builder(offline_data,
                                    rate_limit_tolerance_steps=200)
  server = reverb.Server(builder.make_replay_tables(spec))
  client = server.localhost_client()
  try:
    adder = builder.make_adder(client)
    want = _episode_rows(env, spec, adder, 1000)  # A time-limit cut at 100.
    table = builder.config.replay_table_name
    assert client.server_info()[table].current_size == len(want) == 100
    rows = next(builder.make_dataset_iterator(client))
    np.testing.assert_array_equal(rows, want)  # All of them, in order, once.
    assert rows.shape == (100, 2 * 45 + 24 + 2)  # One row each.
    assert len(next(builder.make_dataset_iterator(client))) == 0
    data = learning.split_transition_rows(rows, obs_dim=45)
    # The time-limit cut is not a terminal: every stored discount is 1.
    np.testing.assert_array_equal(data.discount, np.ones(100))
    assert set(np.unique(data.reward)) <= {0.0, -1.0}  # Raw env rewards.
    online = learning.transitions_from_rows(rows, transform, 45)
    np.testing.assert_allclose(online.rewards, 2.0 * data.reward - 1.0)
    np.testing.assert_array_equal(online.observations, data.observation)
    # The replay table still holds every transition (for checkpoints).
    assert client.server_info()[table].current_size == 100
  finally:
    server.stop()


def test_adder_rows_are_the_environment_transitions(offline_data, spec, env):
  """Every queue row is one (s, a, r, discount, s') of one episode, once."""
  builder, _ = make_builder(offline_data, rate_limit_tolerance_steps=300)
  server = reverb.Server(builder.make_replay_tables(spec))
  client = server.localhost_client()
  rng = np.random.default_rng(0)
  try:
    adder = builder.make_adder(client)
    # A whole episode (time-limit cut), then a part.
    want = np.concatenate([_episode_rows(env, spec, adder, steps, rng)
                           for steps in (100, 7)])
    adder.reset()
    assert client.server_info()[builder.config.replay_table_name
                               ].current_size == 107
    iterator = builder.make_dataset_iterator(client)
    np.testing.assert_array_equal(next(iterator), want)
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
    # One update per transition taken; none while nothing new is in replay.
    assert learner.steps == OFFLINE_STEPS + 10
  finally:
    server.stop()


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
