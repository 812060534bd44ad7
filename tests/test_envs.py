"""Tests for iql_acme.envs: task semantics, dm_env conversion, names, scores."""

import itertools
import os

import dm_env
from dm_env import specs
import gymnasium
from gymnasium_robotics.envs.maze import maps
import numpy as np
import pytest

from iql_acme import config
from iql_acme import envs
from iql_acme.envs import adroit_binary
from iql_acme.envs import maze2d

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')


def _random_actions(spec, seed=0):
  rng = np.random.default_rng(seed)
  while True:
    yield rng.uniform(spec.minimum, spec.maximum).astype(spec.dtype)


def _run_episode(env, policy):
  """Steps `env` to the end of one episode; returns timesteps and infos."""
  timesteps, infos = [env.reset()], [dict(env.last_info)]
  while not timesteps[-1].last():
    timesteps.append(env.step(next(policy)))
    infos.append(dict(env.last_info))
  return timesteps, infos


def test_pen_binary_episode_matches_awac():
  env = envs.make_environment('pen-binary-v0', seed=0)
  assert env.observation_spec().shape == (45,)
  assert env.observation_spec().dtype == np.float32
  action_spec = env.action_spec()
  assert isinstance(action_spec, specs.BoundedArray)
  assert action_spec.shape == (24,) and action_spec.dtype == np.float32
  action_space = env.environment.action_space
  np.testing.assert_array_equal(action_spec.minimum, action_space.low)
  np.testing.assert_array_equal(action_spec.maximum, action_space.high)
  assert env.max_episode_steps == 100

  timesteps, infos = _run_episode(env, _random_actions(action_spec))
  assert timesteps[0].first()
  steps = timesteps[1:]
  assert len(steps) == 100
  assert all('goal_achieved' in info for info in infos)
  for timestep, info in zip(steps, infos[1:]):
    assert timestep.reward in (0.0, -1.0)
    assert timestep.reward == float(info['goal_achieved']) - 1.0
    assert timestep.observation.dtype == np.float32
    assert timestep.discount == 1.0
  assert all(timestep.mid() for timestep in steps[:-1])
  assert steps[-1].last() and steps[-1].discount == 1.0
  # Acme steps past LAST to start the next episode.
  assert env.step(next(_random_actions(action_spec))).first()


class _FakeHand(gymnasium.Env):
  """Pays gymnasium-robotics' sparse rewards; succeeds on every other step."""
  observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,))
  action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,))

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    self._t = 0
    return np.zeros(3, np.float32), {}

  def step(self, action):
    self._t += 1
    success = self._t % 2 == 0
    return (np.zeros(3, np.float32), 10.0 if success else -0.1, True, False,
            {'success': np.bool_(success)})


def test_binary_reward_is_goal_achieved_minus_one_and_never_terminal():
  env = adroit_binary.BinaryHandReward(_FakeHand())
  env.reset(seed=0)
  for expected_success in (False, True, False, True):
    _, reward, terminated, _, info = env.step(np.zeros(2))
    assert info['goal_achieved'] is expected_success
    assert reward == float(expected_success) - 1.0
    assert not terminated


@pytest.mark.parametrize('name', ['door-binary-v0', 'relocate-binary-v0'])
def test_door_and_relocate_sizes_and_time_limit(name):
  env = envs.make_environment(name, seed=0)
  assert env.observation_spec().shape == (39,)
  assert env.max_episode_steps == 200
  assert env.environment.spec.max_episode_steps == 200


def test_door_full_episode_is_200_steps():
  env = envs.make_environment('door-binary-v0', seed=1)
  timesteps, _ = _run_episode(env, _random_actions(env.action_spec()))
  assert len(timesteps) - 1 == 200
  assert timesteps[-1].last() and timesteps[-1].discount == 1.0


@pytest.mark.parametrize('name, obs_dim', [('halfcheetah-medium-v2', 17),
                                           ('hopper-medium-replay-v2', 11),
                                           ('walker2d-expert-v2', 17)])
def test_locomotion_dims(name, obs_dim):
  env = envs.make_environment(name, seed=0)
  assert env.observation_spec().shape == (obs_dim,)
  assert env.reset().observation.shape == (obs_dim,)
  assert env.max_episode_steps == 1000


def test_hopper_fall_is_terminal_with_discount_zero():
  env = envs.make_environment('hopper-medium-v2', seed=0)
  full_thrust = np.ones(env.action_spec().shape, np.float32)
  timesteps, _ = _run_episode(env, itertools.repeat(full_thrust))
  assert len(timesteps) - 1 < env.max_episode_steps  # It fell.
  assert timesteps[-1].last() and timesteps[-1].discount == 0.0
  assert all(timestep.discount == 1.0 for timestep in timesteps[1:-1])


def test_seed_reproduces_and_later_resets_continue_the_stream():
  first = envs.make_environment('pen-binary-v0', seed=3)
  again = envs.make_environment('pen-binary-v0', seed=3)
  other = envs.make_environment('pen-binary-v0', seed=4)
  start = first.reset().observation
  np.testing.assert_array_equal(start, again.reset().observation)
  assert not np.array_equal(start, other.reset().observation)
  assert not np.array_equal(start, first.reset().observation)


def test_wrong_action_shape_is_a_clear_error():
  env = envs.make_environment('pen-binary-v0', seed=0)
  env.reset()
  with pytest.raises(ValueError, match='unbatched'):
    env.step(np.zeros((2, 24), np.float32))


def test_maze2d_layouts_match_gymnasium_robotics():
  for spec, gym_map in ((maze2d.MEDIUM_MAZE, maps.MEDIUM_MAZE),
                        (maze2d.LARGE_MAZE, maps.LARGE_MAZE)):
    walls = [[int(tile == '#') for tile in row]
             for row in maze2d.parse_maze(spec)]
    assert walls == gym_map


@pytest.mark.parametrize('name, time_limit', [('maze2d-medium-v1', 600),
                                              ('maze2d-large-v1', 800)])
def test_maze2d_specs_and_reset_distribution(name, time_limit):
  env = envs.make_environment(name, seed=0)
  assert env.observation_spec().shape == (4,)
  assert env.action_spec().shape == (2,)
  assert env.max_episode_steps == time_limit
  rows = maze2d.parse_maze(env.environment.maze_spec)
  for _ in range(20):
    position = env.reset().observation[:2]
    cell = np.round(position).astype(int)
    assert rows[cell[0]][cell[1]] in 'OG'
    assert np.all(np.abs(position - cell) <= 0.1 + 1e-6)


def test_maze2d_observations_are_in_d4rl_frame():
  env = envs.make_gymnasium_env('maze2d-medium-v1', seed=0)
  np.testing.assert_array_equal(env.target, env.goal_cell)
  # From cell (1, 1), pushing along -x runs into the wall of row 0, which
  # spans x <= 0.3 in D4RL's frame; the ball's radius is 0.1.
  env.set_state([1.0, 1.0], [0.0, 0.0])
  for _ in range(100):
    observation, *_ = env.step(np.array([-1.0, 0.0]))
  np.testing.assert_allclose(observation[:2], [0.4, 1.0], atol=0.01)


def test_maze2d_reward_is_one_only_within_half_a_cell_of_the_goal():
  env = envs.make_gymnasium_env('maze2d-medium-v1', seed=0)
  goal = env.target
  rewards = []
  # Cells (6, 5) and (6, 6) are both open, so the ball can sit between them.
  for offset in (0.0, 0.3, 0.45, 0.55, 0.7, 1.0):
    env.set_state(goal - [0.0, offset], [0.0, 0.0])
    observation, reward, terminated, _, info = env.step(np.zeros(2))
    within = np.linalg.norm(observation[:2] - goal) <= 0.5
    assert reward == (1.0 if within else 0.0)
    assert info['goal_achieved'] == within
    assert not terminated
    rewards.append(reward)
  assert rewards == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_unknown_name_error_is_one_line_and_helpful():
  with pytest.raises(ValueError) as error:
    envs.make_environment('pen-binary-v1', seed=0)
  message = str(error.value)
  assert '\n' not in message
  assert "did you mean 'pen-binary-v0'" in message
  assert all(name in message for name in envs.KNOWN_ENVIRONMENTS)
  with pytest.raises(ValueError, match='no simulator'):
    envs.make_environment('antmaze-large-play-v0', seed=0)


def test_domain_of():
  expected = {
      'pen-binary-v0': 'hand_finetune',
      'relocate-binary-v0': 'hand_finetune',
      'hopper-medium-replay-v2': 'locomotion',
      'walker2d-medium-expert-v2': 'locomotion',
      'antmaze-umaze-diverse-v0': 'antmaze',
      'maze2d-large-v1': 'antmaze',
      'door-cloned-v1': 'adroit',
      'hammer-human-v0': 'adroit',
      'kitchen-partial-v0': 'kitchen',
  }
  for name, domain in expected.items():
    assert envs.domain_of(name) == domain
  for name in envs.KNOWN_ENVIRONMENTS:
    assert envs.domain_of(name) in config.PRESETS
  with pytest.raises(ValueError, match='no IQL domain'):
    envs.domain_of('cartpole-v1')


def test_success_rule_counts_more_than_threshold_steps():
  assert envs.success_steps_threshold('pen-binary-v0') == 20
  assert envs.success_steps_threshold('door-binary-v0') == 25
  assert envs.success_steps_threshold('relocate-binary-v0') == 25
  pen_20 = [True] * 20 + [False] * 80
  pen_21 = [False] * 79 + [True] * 21
  assert not envs.episode_success('pen-binary-v0', pen_20)
  assert envs.episode_success('pen-binary-v0', pen_21)
  assert not envs.episode_success('door-binary-v0', [True] * 25)
  assert envs.episode_success('door-binary-v0', [True] * 26)
  assert envs.is_binary_task('door-binary-v0')
  assert not envs.is_binary_task('hopper-medium-v2')
  with pytest.raises(ValueError):
    envs.success_steps_threshold('hopper-medium-v2')


def test_normalized_score_uses_d4rl_references():
  from d4rl import infos  # pylint: disable=g-import-not-at-top
  for name in ('hopper-medium-v2', 'maze2d-medium-v1', 'maze2d-large-v1'):
    low, high = infos.REF_MIN_SCORE[name], infos.REF_MAX_SCORE[name]
    assert envs.normalized_score(name, low) == pytest.approx(0.0)
    assert envs.normalized_score(name, high) == pytest.approx(100.0)
    assert envs.normalized_score(name, (low + high) / 2) == pytest.approx(50.0)
  assert envs.normalized_score('not-a-d4rl-name-v0', 1.0) is None


def test_normalized_score_of_binary_tasks_spans_the_time_limit():
  # -T: goal never achieved in a T-step episode; 0: achieved at every step.
  assert envs.normalized_score('pen-binary-v0', -100.0) == 0.0
  assert envs.normalized_score('pen-binary-v0', 0.0) == 100.0
  assert envs.normalized_score('door-binary-v0', -50.0) == 75.0


def test_time_limit_cut_is_not_terminal_for_dm_env():
  env = envs.make_environment('maze2d-medium-v1', seed=0)
  timesteps, _ = _run_episode(env, _random_actions(env.action_spec()))
  assert len(timesteps) - 1 == 600
  assert timesteps[-1].step_type == dm_env.StepType.LAST
  assert timesteps[-1].discount == 1.0
