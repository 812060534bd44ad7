"""Tests of the stand-in data generators on tiny settings (no full regeneration)."""

import json
import os
import sys

import h5py
import mujoco
import numpy as np
import pytest

from iql_acme import envs
from iql_acme.data.loading import load_dataset
from iql_acme.standin import awac_format
from iql_acme.standin import bc
from iql_acme.standin import maze_waypoints
from iql_acme.standin import mppi

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import make_maze2d  # pylint: disable=g-import-not-at-top,wrong-import-position
import make_pen_demos  # pylint: disable=g-import-not-at-top,wrong-import-position

PEN = 'pen-binary-v0'
PEN_OBS_DIM, PEN_ACT_DIM = 45, 24


def _pen_env(seed):
  env = envs.make_gymnasium_env(PEN, seed=seed)
  env.reset(seed=seed)
  return env


def test_pen_geometry_matches_simulator_sites():
  env = _pen_env(seed=3)
  rng = np.random.default_rng(0)
  for _ in range(15):
    env.step(rng.uniform(-1, 1, PEN_ACT_DIM))
  model, data = env.unwrapped.model, env.unwrapped.data
  geometry = mppi.PenGeometry(model)
  mujoco.mj_kinematics(model, data)
  pos, axis = geometry.pose(data.qpos[None])
  top = data.site_xpos[model.site('object_top').id]
  bottom = data.site_xpos[model.site('object_bottom').id]
  np.testing.assert_allclose(pos[0], data.xpos[model.body('Object').id],
                             atol=1e-9)
  np.testing.assert_allclose(axis[0], (top - bottom) / np.linalg.norm(
      top - bottom), atol=1e-9)
  target_top = data.site_xpos[model.site('target_top').id]
  target_bottom = data.site_xpos[model.site('target_bottom').id]
  np.testing.assert_allclose(
      geometry.target_axis, (target_top - target_bottom) / np.linalg.norm(
          target_top - target_bottom), atol=1e-9)


def test_planner_scores_the_state_the_env_observes():
  # The rollout's scored state must give the cost the env's own observation
  # gives after executing the same action.
  env = _pen_env(seed=5)
  unwrapped = env.unwrapped
  config = mppi.PenCostConfig(terminal=0.0)
  cost = mppi.PenTrajectoryCost(unwrapped.model, config)
  planner = mppi.MPPIPlanner(
      unwrapped.model, cost, unwrapped.act_mean, unwrapped.act_rng,
      unwrapped.frame_skip, mppi.MPPIConfig(horizon=1, num_threads=1))
  action = np.random.default_rng(1).uniform(-1, 1, (1, 1, PEN_ACT_DIM))
  predicted = planner.rollout_costs(unwrapped.data, action)[0]
  observation, *_ = env.step(action[0, 0])
  np.testing.assert_allclose(predicted,
                             mppi.pen_cost_from_obs(observation, config),
                             rtol=1e-6, atol=1e-6)


def _episode_cost(seed, steps, choose_action):
  env = _pen_env(seed)
  costs = []
  for _ in range(steps):
    observation, *_ = env.step(choose_action(env))
    costs.append(mppi.pen_cost_from_obs(observation, mppi.PenCostConfig()))
  return float(np.mean(costs))


def test_mppi_lowers_cost_below_zero_action_on_a_short_episode():
  seed, steps = 1, 25
  env_for_planner = {}

  def plan(env):
    if 'planner' not in env_for_planner:
      u = env.unwrapped
      env_for_planner['planner'] = mppi.MPPIPlanner(
          u.model, mppi.PenTrajectoryCost(u.model, mppi.PenCostConfig(
              position=20.0)), u.act_mean, u.act_rng, u.frame_skip,
          mppi.MPPIConfig(num_samples=32, horizon=8, noise_std=0.25,
                          num_threads=1, plan_substeps=2), seed=0)
    return env_for_planner['planner'].act(env.unwrapped.data)

  zero_cost = _episode_cost(seed, steps, lambda env: np.zeros(PEN_ACT_DIM))
  mppi_cost = _episode_cost(seed, steps, plan)
  assert mppi_cost < zero_cost - 0.05, (mppi_cost, zero_cost)


def test_knot_interpolation_is_linear_between_knots():
  weights = mppi.knot_interpolation(horizon=7, every=3)
  assert weights.shape == (7, 4)
  np.testing.assert_allclose(weights.sum(1), 1.0)
  knots = np.array([0.0, 3.0, -3.0, 6.0])
  np.testing.assert_allclose(weights @ knots, [0, 1, 2, 3, 1, -1, -3])


def _planner_actions(config, seed=2, steps=12):
  env = _pen_env(seed)
  u = env.unwrapped
  planner = mppi.MPPIPlanner(
      u.model, mppi.PenTrajectoryCost(u.model, mppi.PenCostConfig()),
      u.act_mean, u.act_rng, u.frame_skip, config, seed=0)
  actions = []
  for _ in range(steps):
    actions.append(planner.act(u.data))
    env.step(actions[-1])
  return np.array(actions)


def test_smoothing_options_make_smoother_plans():
  base = dict(num_samples=16, horizon=6, noise_std=0.3, num_threads=1,
              plan_substeps=2)
  jerky = _planner_actions(mppi.MPPIConfig(**base))
  smooth = _planner_actions(mppi.MPPIConfig(
      **base, noise_knot_every=3, action_change_cost=0.05, action_filter=0.5))
  jerky_change = make_pen_demos.action_smoothness([jerky])
  smooth_change = make_pen_demos.action_smoothness([smooth])
  assert (smooth_change['mean_abs_action_change'] <
          0.5 * jerky_change['mean_abs_action_change'])


def test_action_filter_starts_from_the_executed_action():
  env = _pen_env(seed=4)
  u = env.unwrapped
  planner = mppi.MPPIPlanner(
      u.model, mppi.PenTrajectoryCost(u.model, mppi.PenCostConfig()),
      u.act_mean, u.act_rng, u.frame_skip,
      mppi.MPPIConfig(num_samples=4, horizon=2, num_threads=1,
                      action_filter=1.0), seed=0)
  executed = np.linspace(-0.5, 0.5, PEN_ACT_DIM)
  # A filter weight of 1 keeps the previous action whatever the plan says.
  np.testing.assert_allclose(planner.act(u.data, executed), executed)


def test_action_smoothness_of_known_sequences():
  steps = 10
  alternating = np.where(np.arange(steps) % 2 == 0, 1.0, -1.0)[:, None]
  stats = make_pen_demos.action_smoothness([alternating])
  assert stats['mean_abs_action_change'] == pytest.approx(2.0)
  assert stats['lag1_autocorrelation'] == pytest.approx(-(steps - 1) / steps)
  constant_and_ramp = np.stack([np.zeros(steps), np.arange(steps)], 1)
  stats = make_pen_demos.action_smoothness([constant_and_ramp])
  assert stats['mean_abs_action_change'] == pytest.approx(0.5)
  centred = np.arange(steps) - (steps - 1) / 2
  # The constant dimension is left out of the autocorrelation.
  assert stats['lag1_autocorrelation'] == pytest.approx(
      np.sum(centred[1:] * centred[:-1]) / np.sum(centred ** 2))


class _RecordingLabeler:
  """Stands in for the planner: returns a fixed label, records its inputs."""

  def __init__(self):
    self.previous = []

  def act(self, data, previous_action):
    del data
    self.previous.append(None if previous_action is None
                         else np.array(previous_action))
    return np.full(PEN_ACT_DIM, 0.25)


def test_policy_episode_labels_every_visited_state():
  env = envs.make_gymnasium_env(PEN, seed=0)
  labeler = _RecordingLabeler()
  rng = np.random.default_rng(0)
  policy = lambda obs: np.full(PEN_ACT_DIM, 0.1)
  episode = make_pen_demos.run_policy_episode(
      env, 7, policy, noise_std=0.2, rng=rng, labeler=lambda env: labeler)
  steps = envs.max_episode_steps(PEN)
  assert episode['actions'].shape == (steps, PEN_ACT_DIM)
  assert episode['observations'].shape == (steps + 1, PEN_OBS_DIM)
  np.testing.assert_allclose(episode['labels'], 0.25)
  # The labeler is told the action executed before each state (noise
  # included), and nothing before the first.
  assert labeler.previous[0] is None
  np.testing.assert_allclose(np.array(labeler.previous[1:]),
                             episode['actions'][:-1], atol=1e-6)
  assert np.std(episode['actions'] - 0.1) > 0.1
  # The env was reset with seed 7: same target as a fresh reset.
  observation, _ = env.reset(seed=7)
  np.testing.assert_allclose(episode['observations'][0], observation,
                             atol=1e-6)


def test_beta_mixing_executes_the_planners_labels():
  env = envs.make_gymnasium_env(PEN, seed=0)
  policy = lambda obs: np.full(PEN_ACT_DIM, -0.5)
  runs = {}
  for probability in (0.0, 0.5, 1.0):
    labeler = _RecordingLabeler()
    runs[probability] = make_pen_demos.run_policy_episode(
        env, 3, policy, rng=np.random.default_rng(0),
        labeler=lambda env, labeler=labeler: labeler,
        expert_probability=probability)
  np.testing.assert_allclose(runs[0.0]['actions'], -0.5)
  np.testing.assert_allclose(runs[1.0]['actions'], 0.25)
  # Mixed: every executed action is the policy's or the label, both occur.
  executed = runs[0.5]['actions'][:, 0]
  assert set(np.round(executed, 6)) == {-0.5, 0.25}


def test_policy_guided_plan_is_the_policys_own_rollout():
  env = envs.make_gymnasium_env(PEN, seed=0)
  observation, _ = env.reset(seed=4)
  weights = np.random.default_rng(0).normal(0, 0.3, (PEN_OBS_DIM, PEN_ACT_DIM))
  policy = lambda obs: np.tanh(np.asarray(obs, np.float64) @ weights)
  config = mppi.MPPIConfig(num_samples=4, horizon=5, num_threads=1)
  planner = make_pen_demos.make_planner(env, 4, config, mppi.PenCostConfig())
  labeler = make_pen_demos.PolicyGuidedLabeler(env, planner, policy)
  data = env.unwrapped.data
  qpos, qvel = data.qpos.copy(), data.qvel.copy()
  plan = labeler.policy_plan(data)
  assert plan.shape == (5, PEN_ACT_DIM)
  np.testing.assert_array_equal(data.qpos, qpos)  # The real env is untouched.
  np.testing.assert_array_equal(data.qvel, qvel)
  # Stepping the real env with the plan shows the policy the same states.
  for action in plan:
    np.testing.assert_allclose(policy(observation), action, atol=1e-3)
    observation = env.step(action)[0]
  label = labeler.act(data)
  assert label.shape == (PEN_ACT_DIM,) and np.all(np.abs(label) <= 1.0)


def test_dagger_adds_labelled_states_and_is_cached(tmp_path):
  env = envs.make_gymnasium_env(PEN, seed=0)
  demo = make_pen_demos.run_policy_episode(
      env, 11, lambda obs: np.zeros(PEN_ACT_DIM))
  args = make_pen_demos.parse_args([
      '--out', str(tmp_path), '--dagger_rounds', '1', '--dagger_episodes',
      '1', '--seed', '0'])
  config = mppi.MPPIConfig(num_samples=4, horizon=2, num_threads=1,
                           plan_substeps=1, noise_knot_every=2)
  bc_config = bc.BCConfig(hidden_sizes=(16,), num_steps=20, batch_size=32)
  results = []
  for _ in range(2):  # the second pass reads the cached DAgger episode
    params, history = make_pen_demos.dagger(
        args, env, [demo], config, mppi.PenCostConfig(), bc_config,
        str(tmp_path), eval_seeds=[100, 101], log=lambda _: None)
    results.append((params, history))
  assert [h['round'] for h in history] == [0, 1]
  assert history[0]['training_transitions'] == len(demo['actions'])
  dagger_steps = history[1]['training_transitions'] - len(demo['actions'])
  assert 0 < dagger_steps <= envs.max_episode_steps(PEN)
  for h in history:
    assert h['episodes'] == 2
    assert h['standard_error'] == pytest.approx(
        np.sqrt(h['success_rate'] * (1 - h['success_rate']) / 2))
  assert os.path.exists(tmp_path / 'dagger_1_0000.npz')
  for name in results[0][0]:
    np.testing.assert_array_equal(results[0][0][name], results[1][0][name])


def test_parallel_workers_give_the_sequential_episodes(tmp_path):
  config = mppi.MPPIConfig(num_samples=4, horizon=2, num_threads=1,
                           plan_substeps=1, noise_knot_every=2)
  collected = {}
  for workers in (1, 2):
    args = make_pen_demos.parse_args([
        '--out', str(tmp_path), '--work_dir', str(tmp_path / f'w{workers}'),
        '--num_demos', '3', '--max_episodes', '3', '--seed', '5',
        '--num_workers', str(workers)])
    episodes, cache = make_pen_demos.collect_demos(args, config,
                                                   mppi.PenCostConfig())
    assert len(os.listdir(cache)) == 3  # every episode cached
    collected[workers] = episodes
  assert [e['index'] for e in collected[2]] == [0, 1, 2]
  for sequential, parallel in zip(collected[1], collected[2]):
    np.testing.assert_array_equal(sequential['actions'], parallel['actions'])
    np.testing.assert_array_equal(sequential['goal_achieved'],
                                  parallel['goal_achieved'])
  # Episode i is env seed 5 + i: its first observation is that reset's.
  env = envs.make_gymnasium_env(PEN, seed=0)
  observation, _ = env.reset(seed=6)
  np.testing.assert_allclose(collected[2][1]['observations'][0], observation,
                             atol=1e-6)


def _fake_pen_episode(rng, steps=12, achieved_from=5):
  observations = rng.normal(size=(steps + 1, PEN_OBS_DIM)).astype(np.float32)
  actions = rng.uniform(-1, 1, (steps, PEN_ACT_DIM)).astype(np.float32)
  achieved = np.arange(steps) >= achieved_from
  return observations, actions, achieved


def test_awac_writers_round_trip_in_the_real_layouts(tmp_path):
  rng = np.random.default_rng(0)
  obs, actions, achieved = _fake_pen_episode(rng)
  demo = awac_format.demo_path(obs[:-1], actions, obs[1:], achieved)
  rollout = awac_format.bc_path(obs[:-1], actions, obs[1:], achieved,
                                env_rewards=np.arange(12.0))
  awac_format.save_paths(str(tmp_path / 'pen2_sparse.npy'), [demo, demo])
  awac_format.save_paths(str(tmp_path / 'pen_bc_sparse4.npy'), [rollout])

  demos = awac_format.load_paths(str(tmp_path / 'pen2_sparse.npy'))
  rollouts = awac_format.load_paths(str(tmp_path / 'pen_bc_sparse4.npy'))
  assert len(demos) == 2 and len(rollouts) == 1
  for path in demos + rollouts:
    assert set(path) == set(awac_format.PATH_KEYS)
  # Demo layout: observation dicts, one extra reward, list of terminals.
  assert isinstance(demos[0]['observations'], list)
  np.testing.assert_array_equal(
      demos[0]['observations'][3]['state_observation'], obs[3])
  np.testing.assert_array_equal(
      demos[0]['next_observations'][3]['observation'], obs[4])
  assert len(demos[0]['rewards']) == len(actions) + 1
  assert not any(demos[0]['terminals'])
  # BC layout: plain arrays, [T, 1] rewards/terminals, info per step.
  assert rollouts[0]['observations'].shape == (12, PEN_OBS_DIM)
  assert rollouts[0]['rewards'].shape == (12, 1)
  assert rollouts[0]['terminals'].shape == (12, 1)
  assert rollouts[0]['env_infos'][-1]['TimeLimit.truncated']
  assert [i['goal_achieved'] for i in rollouts[0]['env_infos']] == list(
      achieved)
  expected_rewards = np.where(achieved, 0.0, -1.0)
  for path in (demos[0], rollouts[0]):
    o, a, r, next_o = awac_format.path_arrays(path)
    np.testing.assert_array_equal(o, obs[:-1])
    np.testing.assert_array_equal(a, actions)
    np.testing.assert_array_equal(r, expected_rewards)
    np.testing.assert_array_equal(next_o, obs[1:])

  # The project's loader reads the folder as AWAC data.
  transitions, _ = load_dataset(str(tmp_path), domain='hand_finetune',
                                obs_dim=PEN_OBS_DIM, act_dim=PEN_ACT_DIM)
  assert transitions.rewards.shape == (3 * 12,)
  np.testing.assert_array_equal(np.sort(transitions.rewards),
                                np.sort(np.tile(expected_rewards, 3)))
  assert int(transitions.episode_ends.sum()) == 3
  assert np.all(transitions.discounts == 1.0)


def test_bc_fits_a_smooth_policy():
  rng = np.random.default_rng(0)
  observations = rng.normal(size=(512, 6)).astype(np.float32)
  weights = rng.normal(size=(6, 3)) * 0.5
  actions = np.tanh(observations @ weights).astype(np.float32)
  params = bc.fit_bc(observations, actions,
                     bc.BCConfig(hidden_sizes=(32, 32), num_steps=400,
                                 batch_size=128), seed=0,
                     log_fn=lambda _: None)
  predicted = bc.bc_policy(params)(observations)
  assert predicted.shape == actions.shape
  assert np.all(np.abs(predicted) <= 1.0)
  # Far better than the best constant policy (the mean action).
  baseline = np.mean((actions - actions.mean(0)) ** 2)
  assert np.mean((predicted - actions) ** 2) < 0.2 * baseline


def test_shortest_path_goes_around_walls():
  maze = ('#####\\'
          '#OOO#\\'
          '###O#\\'
          '#OOO#\\'
          '#####')
  cells = maze_waypoints.open_cells(maze)
  path = maze_waypoints.shortest_path(cells, (1, 1), (3, 1))
  assert path == [(1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
  assert maze_waypoints.shortest_path(cells, (1, 1), (1, 1)) == [(1, 1)]


def test_waypoint_controller_reaches_a_far_cell_without_noise():
  env = envs.make_gymnasium_env('maze2d-medium-v1', seed=0)
  env.set_state(np.array([1.0, 1.0]), np.zeros(2))
  controller = maze_waypoints.WaypointController(
      env.maze_spec, np.random.default_rng(0))
  target = np.array([6.0, 6.0])  # the opposite corner of the medium maze
  observation = env.observation()
  for _ in range(600):
    action, reached = controller.action(observation[:2], observation[2:],
                                        target)
    if reached:
      break
    observation, *_ = env.step(action)
  assert reached
  assert np.linalg.norm(observation[:2] - target) < 0.1


def test_maze2d_writer_produces_d4rl_hdf5(tmp_path):
  file = str(tmp_path / 'maze2d-medium-v1.hdf5')
  num_steps = 1300  # two 600-step timeouts and a partial chunk
  make_maze2d.main(['--layout', 'medium', '--num_steps', str(num_steps),
                    '--out', file, '--seed', '1'])
  with h5py.File(file, 'r') as h5file:
    keys = set()
    h5file.visit(lambda name: keys.add(name) if isinstance(
        h5file[name], h5py.Dataset) else None)
    assert keys == {'observations', 'actions', 'rewards', 'terminals',
                    'timeouts', 'infos/goal', 'infos/qpos', 'infos/qvel'}
    obs = h5file['observations'][:]
    rewards = h5file['rewards'][:]
    timeouts = h5file['timeouts'][:]
    assert obs.shape == (num_steps, 4) and obs.dtype == np.float32
    assert h5file['actions'].shape == (num_steps, 2)
    assert np.all(np.abs(h5file['actions'][:]) <= 1.0)
    assert not h5file['terminals'][:].any()
    np.testing.assert_array_equal(np.flatnonzero(timeouts), [599, 1199])
    np.testing.assert_array_equal(h5file['infos/qpos'][:], obs[:, :2])
    goal = h5file.attrs['eval_target']
  # Sparse reward of the fixed evaluation goal, on the next observation.
  reached = np.linalg.norm(obs[1:, :2] - goal, axis=1) <= 0.5
  np.testing.assert_array_equal(rewards[:-1], reached.astype(np.float32))
  # D4RL's loading rule drops the time-out rows and the last row.
  transitions, _ = load_dataset(file, domain='antmaze', obs_dim=4, act_dim=2)
  assert transitions.rewards.shape == (num_steps - 1 - 2,)
  assert os.path.exists(file.replace('.hdf5', '.png'))


def _pen_bc_sweep_cache(tmp_path):
  """Two 'successful' planner episodes and one DAgger round, real env states
  in make_pen_demos' cache layout (goal flags set: these are not planned)."""
  import pen_bc_sweep  # pylint: disable=g-import-not-at-top
  env = envs.make_gymnasium_env(PEN, seed=0)
  planner_dir, dagger_dir = tmp_path / 'planner', tmp_path / 'dagger'
  planner_dir.mkdir()
  dagger_dir.mkdir()
  rng = np.random.default_rng(0)
  lengths = []
  for index in range(3):  # Episode 1 fails: not a demo.
    episode = make_pen_demos.run_policy_episode(
        env, index, lambda obs: rng.uniform(-1, 1, PEN_ACT_DIM))
    episode['goal_achieved'][:] = index != 1
    make_pen_demos.save_npz_atomically(
        str(planner_dir / f'episode_0_{index:04d}.npz'),
        observations=episode['observations'], actions=episode['actions'],
        goal_achieved=episode['goal_achieved'])
    lengths.append(len(episode['actions']))
  labelled = make_pen_demos.run_policy_episode(
      env, 50, lambda obs: np.zeros(PEN_ACT_DIM))
  make_pen_demos.save_npz_atomically(
      str(dagger_dir / 'dagger_1_0000.npz'),
      observations=labelled['observations'], actions=labelled['actions'],
      labels=rng.uniform(-1, 1, labelled['actions'].shape))
  return pen_bc_sweep, str(planner_dir), str(dagger_dir), (
      lengths[0] + lengths[2], len(labelled['actions']))


def test_pen_bc_sweep_refits_bc_per_configuration(tmp_path):
  sweep, planner_dir, dagger_dir, (demo_steps, label_steps) = (
      _pen_bc_sweep_cache(tmp_path))
  out = tmp_path / 'sweep.json'
  sweep.main(['--planner_dir', planner_dir, '--dagger_dir', dagger_dir,
              '--num_demos', '2', '--num_eval_episodes', '2', '--out',
              str(out), '--configs',
              'rounds=0,steps=20;rounds=1,steps=30,noise=0.1,seed=1,lr=3e-4'])
  results = json.load(open(out))['results']
  assert [r['config']['rounds'] for r in results] == [0, 1]
  assert results[0]['training_transitions'] == demo_steps
  assert results[1]['training_transitions'] == demo_steps + label_steps
  assert results[1]['bc']['num_steps'] == 30
  assert results[1]['bc']['input_noise'] == 0.1
  assert results[1]['bc']['learning_rate'] == 3e-4
  for r in results:
    assert r['episodes'] == 2
    assert r['standard_error'] == pytest.approx(
        np.sqrt(r['success_rate'] * (1 - r['success_rate']) / 2))


@pytest.mark.parametrize('configs,num_demos,message', [
    ('rounds=0,depth=3', '2', 'bad configuration item'),
    ('rounds=2', '2', 'no DAgger round 2'),
    ('rounds=0', '3', 'fewer than --num_demos 3'),
])
def test_pen_bc_sweep_bad_input_is_one_clear_error(tmp_path, capsys, configs,
                                                   num_demos, message):
  sweep, planner_dir, dagger_dir, _ = _pen_bc_sweep_cache(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(['--planner_dir', planner_dir, '--dagger_dir', dagger_dir,
                '--num_demos', num_demos, '--configs', configs, '--out',
                str(tmp_path / 'x.json')])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'x.json')


def test_final_refit_fits_demos_and_every_labelled_round(tmp_path):
  _, planner_dir, dagger_dir, (demo_steps, label_steps) = (
      _pen_bc_sweep_cache(tmp_path))
  demos = [make_pen_demos.load_npz(os.path.join(planner_dir, name))
           for name in ('episode_0_0000.npz', 'episode_0_0002.npz')]
  env = envs.make_gymnasium_env(PEN, seed=0)
  config = bc.BCConfig(hidden_sizes=(16,), num_steps=20, batch_size=32,
                       input_noise=0.1)
  params, result = make_pen_demos.final_refit(
      dagger_dir, demos, 1, config, 3, env, eval_seeds=[100, 101, 102])
  assert result['training_transitions'] == demo_steps + label_steps
  assert result['episodes'] == 3
  saved = np.load(os.path.join(dagger_dir, 'bc_params_final.npz'))
  for name in params:
    np.testing.assert_array_equal(saved[name], params[name])
  again, _ = make_pen_demos.final_refit(
      dagger_dir, demos, 1, config, 3, env, eval_seeds=[100])
  for name in params:  # deterministic given the seed
    np.testing.assert_array_equal(again[name], params[name])
  with pytest.raises(ValueError, match='no DAgger round 2'):
    make_pen_demos.final_refit(dagger_dir, demos, 2, config, 3, env, [100])


def test_unfiltered_labels_undo_the_executed_action_filter():
  import pen_bc_probes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  plan_firsts = rng.uniform(-1, 1, (6, PEN_ACT_DIM))
  executed, previous = [], None
  for plan_first in plan_firsts:  # as MPPIPlanner.act filters them
    previous = plan_first if previous is None else (
        0.2 * previous + 0.8 * plan_first)
    executed.append(previous)
  executed = np.array(executed)
  np.testing.assert_allclose(
      pen_bc_probes.unfiltered_labels(executed, executed, 0.2), plan_firsts,
      atol=1e-12)


def test_pen_bc_probes_on_a_tiny_cache(tmp_path, capsys):
  import pen_bc_probes  # pylint: disable=g-import-not-at-top
  _, planner_dir, dagger_dir, _ = _pen_bc_sweep_cache(tmp_path)
  common = ['--planner_dir', planner_dir, '--dagger_dir', dagger_dir,
            '--num_demos', '2', '--rounds', '1', '--num_eval_episodes', '2',
            '--bc_steps', '20']
  with pytest.raises(SystemExit, match='no BC parameters'):
    pen_bc_probes.main(['anatomy', *common, '--out', str(tmp_path / 'a')])
  demos = [make_pen_demos.load_npz(os.path.join(planner_dir, name))
           for name in ('episode_0_0000.npz', 'episode_0_0002.npz')]
  make_pen_demos.final_refit(
      dagger_dir, demos, 1, bc.BCConfig(hidden_sizes=(16,), num_steps=20),
      0, envs.make_gymnasium_env(PEN, seed=0), eval_seeds=[100])
  out = tmp_path / 'anatomy.json'
  pen_bc_probes.main(['anatomy', *common, '--out', str(out)])
  results = json.load(open(out))['results']
  assert len(results['episodes']) == 2
  assert sum(b['episodes'] for b in results['by_angle']) == 2
  for probe, count in (('ensemble', 3), ('prev_action', 2),
                       ('unfiltered', 2)):
    out = tmp_path / f'{probe}.json'
    pen_bc_probes.main([probe, *common, '--bc_seeds', '0,1', '--out',
                        str(out)])
    results = json.load(open(out))['results']
    assert len(results) == count
    assert all(r['episodes'] == 2 for r in results)
  with pytest.raises(SystemExit, match='fewer than --num_demos 3'):
    pen_bc_probes.main(['anatomy', *common[:4], '--num_demos', '3',
                        '--out', str(tmp_path / 'b')])


@pytest.mark.parametrize('flags,message', [
    (['--final_bc_steps', '0'], '--final_bc_steps must be at least 1'),
    (['--final_bc_input_noise', '-0.1'], '--final_bc_input_noise must be'),
    (['--bc_noise_stds', '0.1,x'],
     "argument --bc_noise_stds: must be comma-separated numbers, got '0.1,x'"),
    (['--bc_noise_stds', ''], '--bc_noise_stds is empty'),
])
def test_make_pen_demos_rejects_bad_flags(capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    make_pen_demos.parse_args(['--out', 'x', *flags])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_pen_bc_probes_missing_round_is_one_clear_error(tmp_path):
  import pen_bc_probes  # pylint: disable=g-import-not-at-top
  _, planner_dir, dagger_dir, _ = _pen_bc_sweep_cache(tmp_path)
  with pytest.raises(SystemExit, match='no DAgger round 2'):
    pen_bc_probes.main(['anatomy', '--planner_dir', planner_dir,
                        '--dagger_dir', dagger_dir, '--num_demos', '2',
                        '--rounds', '2', '--out', str(tmp_path / 'x.json')])
  assert not os.path.exists(tmp_path / 'x.json')


def test_gated_fits_take_the_mean_over_seeds_and_return_the_first_fit():
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(32, 3)).astype(np.float32)
  targets = rng.uniform(-1, 1, (32, 2)).astype(np.float32)
  config = bc.BCConfig(num_steps=3, batch_size=8)
  rates = iter([0.2, 0.6, 0.7])
  policies = []

  def evaluate(policy):
    policies.append(policy)
    return {'episodes': 10, 'success_rate': next(rates),
            'standard_error': 0.1}

  lines = []
  params, fits, gate, passed = bc.gated_fits(
      inputs, targets, config, [4, 5, 6], evaluate, 0.5, 'demos',
      log_fn=lines.append)
  assert [f['bc_seed'] for f in fits] == [4, 5, 6]
  assert gate['success_rate'] == pytest.approx(0.5) and passed
  assert gate['standard_error'] == pytest.approx(np.std([.2, .6, .7], ddof=1)
                                                 / np.sqrt(3))
  first = bc.fit_bc(inputs, targets, config, seed=4, log_fn=lambda _: None)
  assert all(np.array_equal(params[k], first[k]) for k in first)
  assert lines[-1].endswith('(gate 0.5: passed)')
  _, _, _, passed = bc.gated_fits(inputs, targets, config, [4], lambda p: {
      'episodes': 10, 'success_rate': 0.4, 'standard_error': 0.1}, 0.5,
                                  'demos', log_fn=lines.append)
  assert not passed
