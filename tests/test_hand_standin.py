"""Door/relocate stand-in: MPPI costs (hand_costs) and make_hand_demos.py."""

import dataclasses
import json
import os
import sys

import mujoco
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import make_hand_demos  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import envs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.data import awac  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import hand_costs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import mppi  # pylint: disable=g-import-not-at-top,wrong-import-position

TASKS = ('door-binary-v0', 'relocate-binary-v0')
# gymnasium-robotics' dense door/relocate rewards add +0.1 * distance of the
# palm to the handle / ball where mj_envs (AWAC's env_reward) subtracts it.
_DENSE_IDS = {'door-binary-v0': ('AdroitHandDoor-v1', 'S_handle', None),
              'relocate-binary-v0': ('AdroitHandRelocate-v1', None, 'Object')}


def _random_states(env, rng, steps=30):
  """(FULLPHYSICS states, env site/body positions) along a random episode."""
  unwrapped = env.unwrapped
  model, data = unwrapped.model, unwrapped.data
  states, palms = [], []
  state = np.empty(mujoco.mj_stateSize(model, mppi.FULL_PHYSICS))
  for _ in range(steps):
    env.step(rng.uniform(-1, 1, env.action_space.shape))
    mujoco.mj_getState(model, data, state, mppi.FULL_PHYSICS)
    # The env's xpos were computed before the last substep's integration;
    # recompute them for the state now held.
    mujoco.mj_kinematics(model, data)
    states.append(state.copy())
    palms.append(data.site_xpos[model.site('S_grasp').id].copy())
  return np.array(states), np.array(palms)


@pytest.mark.parametrize('env_name', TASKS)
def test_site_kinematics_match_the_simulator(env_name):
  env = envs.make_gymnasium_env(env_name, seed=3)
  states, palms = _random_states(env, np.random.default_rng(0))
  kinematics = hand_costs.SiteKinematics(env.unwrapped.model, sites=('S_grasp',))
  np.testing.assert_allclose(kinematics(states[None])[0, :, 0], palms,
                             atol=1e-9)


def test_door_cost_prefers_an_open_door_and_a_turned_latch():
  env = envs.make_gymnasium_env('door-binary-v0', seed=0)
  model = env.unwrapped.model
  cost = hand_costs.DoorTrajectoryCost(model, hand_costs.DoorCostConfig())
  states, _ = _random_states(env, np.random.default_rng(1), steps=1)
  hinge = 1 + model.jnt_qposadr[model.joint('door_hinge').id]
  latch = 1 + model.jnt_qposadr[model.joint('latch').id]
  closed, opened, turned = states.copy(), states.copy(), states.copy()
  closed[:, hinge] = 0.0
  opened[:, hinge] = 1.5
  turned[:, hinge] = 0.0
  turned[:, latch] = 1.5
  plans = np.stack([closed, opened])  # [K=2, H=1, nstate]
  costs = cost(plans)
  assert costs[1] < costs[0] - 15.0  # the 2 + 8 + 10 opening bonuses
  # A turned latch only counts with the palm at the handle: far from it,
  # turning it changes the cost only through the handle's moved position.
  def reach(states):
    sites = cost.kinematics(states[None])[0, 0]
    return np.linalg.norm(sites[0] - sites[1])
  assert reach(closed) > cost.config.latch_reach
  np.testing.assert_allclose(
      cost(turned[None]) - cost(closed[None]),
      cost.config.reach * (reach(turned) - reach(closed)), atol=1e-9)


@pytest.mark.parametrize('env_name', TASKS)
def test_dense_reward_is_mj_envs_formula(env_name):
  """Equals gymnasium-robotics' dense reward but for its reach term's sign."""
  gym_id, handle_site, ball_body = _DENSE_IDS[env_name]
  import gymnasium  # pylint: disable=g-import-not-at-top
  envs.make_gymnasium_env(env_name, seed=0)  # Registers the robotics envs.
  env = gymnasium.make(gym_id)
  env.reset(seed=5)
  unwrapped = env.unwrapped
  model, data = unwrapped.model, unwrapped.data
  rng = np.random.default_rng(2)
  for _ in range(60):
    _, reward, _, _, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
    palm = data.site_xpos[model.site('S_grasp').id]
    other = (data.site_xpos[model.site(handle_site).id] if handle_site
             else data.xpos[model.body(ball_body).id])
    expected = reward - 0.2 * np.linalg.norm(palm - other)
    assert hand_costs.dense_reward(env_name, unwrapped) == pytest.approx(
        expected, abs=1e-9)


def test_make_cost_rejects_pen():
  env = envs.make_gymnasium_env('pen-binary-v0', seed=0)
  with pytest.raises(ValueError, match='relocate-binary-v0 have one'):
    hand_costs.make_cost('pen-binary-v0', env.unwrapped.model)


def _random_planner_job(job):
  """Stands in for the (slow) MPPI planner: a random policy's episode."""
  _, env_name, seed, _ = job
  env = envs.make_gymnasium_env(env_name, seed=0)
  rng = np.random.default_rng(seed)
  episode = make_hand_demos.run_episode(
      env, env_name, seed, lambda o, _: rng.uniform(-1, 1, 28 if env_name.startswith('door') else 30))
  episode['wall_seconds'] = np.float64(0.0)
  return episode


def test_pipeline_writes_awac_files_that_load(tmp_path, monkeypatch):
  """Plumbing only: a random 'planner' whose episodes all count as successes."""
  monkeypatch.setattr(make_hand_demos, 'planner_job', _random_planner_job)
  monkeypatch.setattr(envs, 'episode_success', lambda name, achieved: True)
  out = tmp_path / 'door'
  make_hand_demos.main([
      '--env', 'door-binary-v0', '--out', str(out), '--work_dir',
      str(tmp_path / 'work'), '--num_demos', '3', '--num_workers', '1',
      '--bc_steps', '20', '--bc_seeds', '0', '--num_eval_episodes', '2',
      '--num_bc_episodes', '2', '--gate', '0'])
  assert sorted(os.listdir(out)) == ['door2_sparse.npy', 'door_bc_sparse4.npy',
                                     'meta.json']
  data = awac.read_awac(awac.awac_files_in(str(out)))
  assert data.observations.shape == (5 * 200, 39)
  assert data.actions.shape == (5 * 200, 28)
  paths = np.load(out / 'door_bc_sparse4.npy', allow_pickle=True)
  rewards = [info['env_reward'] for info in paths[0]['env_infos']]
  assert len(set(rewards)) > 1  # the dense reward of each visited state
  meta = json.loads((out / 'meta.json').read_text())
  assert meta['num_demos'] == 3 and meta['num_bc_episodes'] == 2
  assert meta['bc_gate']['passed']


def test_too_few_planner_successes_is_one_line_error(tmp_path, monkeypatch):
  monkeypatch.setattr(make_hand_demos, 'planner_job', _random_planner_job)
  monkeypatch.setattr(envs, 'episode_success', lambda name, achieved: False)
  with pytest.raises(SystemExit, match='demonstrator succeeded in 0 of 2 episodes'):
    make_hand_demos.main([
        '--env', 'door-binary-v0', '--out', str(tmp_path / 'o'),
        '--work_dir', str(tmp_path / 'w'), '--num_demos', '1',
        '--max_episodes', '2', '--num_workers', '1'])
  assert not os.path.exists(tmp_path / 'o' / 'door2_sparse.npy')


@pytest.mark.parametrize('argv, message', [
    (['--env', 'pen-binary-v0'], 'invalid choice'),
    (['--env', 'door-binary-v0', '--num_demos', '0'], '--num_demos must be'),
    (['--env', 'door-binary-v0', '--num_demos', '5', '--max_episodes', '2'],
     'must be at least --num_demos'),
    (['--env', 'door-binary-v0', '--bc_noise_stds', ''], 'must not be empty'),
    (['--env', 'door-binary-v0', '--policy_npz', 'missing.npz'],
     'is not a file'),
    (['--env', 'door-binary-v0', '--dagger_rounds', '-1'],
     '--dagger_rounds must be >= 0'),
])
def test_bad_flags(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    make_hand_demos.parse_args(argv + ['--out', 'o', '--work_dir', 'w'])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def _random_dagger_job(job):
  """Stands in for the planner-labelled BC episode: random labels."""
  episode = _random_planner_job(job[:4])
  episode['labels'] = np.random.default_rng(job[2]).uniform(
      -1, 1, episode['actions'].shape).astype(np.float32)
  return episode


def test_dagger_rounds_add_labelled_states(tmp_path, monkeypatch):
  monkeypatch.setattr(make_hand_demos, 'planner_job', _random_planner_job)
  monkeypatch.setattr(make_hand_demos, 'dagger_job', _random_dagger_job)
  monkeypatch.setattr(envs, 'episode_success', lambda name, achieved: True)
  fitted_sizes = []
  real_fit = make_hand_demos.bc.fit_bc

  def fit_bc(inputs, targets, *args, **kwargs):
    fitted_sizes.append(len(targets))
    return real_fit(inputs, targets, *args, **kwargs)

  monkeypatch.setattr(make_hand_demos.bc, 'fit_bc', fit_bc)
  out = tmp_path / 'door'
  make_hand_demos.main([
      '--env', 'door-binary-v0', '--out', str(out), '--work_dir',
      str(tmp_path / 'work'), '--num_demos', '2', '--num_workers', '1',
      '--dagger_rounds', '2', '--dagger_episodes', '1', '--bc_steps', '5',
      '--bc_seeds', '0', '--num_eval_episodes', '1', '--num_bc_episodes', '0'])
  # Round 1 fits on the demos, round 2 on demos + 1 labelled episode, the
  # gate on demos + 2.
  assert fitted_sizes == [400, 600, 800]
  meta = json.loads((out / 'meta.json').read_text())
  assert [r['labelled_states'] for r in meta['dagger']] == [600, 800]
  assert 'DAgger' in meta['bc_gate']['trained_on']
  assert not meta['bc_gate']['meets_acceptance']  # not BC on demos alone


def test_a_policy_demonstrates_and_is_kept_beside_the_data(tmp_path,
                                                          monkeypatch):
  """--policy_npz: demos are the policy's own (deterministic) episodes."""
  monkeypatch.setattr(envs, 'episode_success', lambda name, achieved: True)
  from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = bc.fit_bc(rng.normal(size=(64, 39)), rng.uniform(-1, 1, (64, 28)),
                     bc.BCConfig(num_steps=2), log_fn=lambda _: None)
  np.savez(tmp_path / 'policy.npz', **params)
  out = tmp_path / 'door'
  make_hand_demos.main([
      '--env', 'door-binary-v0', '--policy_npz', str(tmp_path / 'policy.npz'),
      '--out', str(out), '--work_dir', str(tmp_path / 'work'),
      '--num_demos', '2', '--bc_steps', '2', '--bc_seeds', '0',
      '--num_eval_episodes', '1', '--num_bc_episodes', '0'])
  demos = np.load(out / 'door2_sparse.npy', allow_pickle=True)
  policy = bc.bc_policy(params)
  first = np.stack([o['state_observation'] for o in demos[0]['observations']])
  np.testing.assert_allclose(np.stack(demos[0]['actions']),
                             np.clip(policy(first), -1, 1), atol=1e-5)
  kept = dict(np.load(out / 'demonstrator_policy.npz'))
  assert all(np.array_equal(kept[k], params[k]) for k in params)
  meta = json.loads((out / 'meta.json').read_text())
  assert meta['demonstrator']['kind'].startswith('deterministic MLP policy')


def test_door_without_a_dataset_points_at_make_door_data():
  from iql_acme import run_setup  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='make door-data'):
    run_setup.resolve_dataset_source('door-binary-v0', None)
  with pytest.raises(ValueError) as error:
    run_setup.resolve_dataset_source('relocate-binary-v0', None)
  assert 'relocate2_sparse.npy' in str(error.value)
  assert 'make door-data' not in str(error.value)
  # The pen has its stand-in embedded; a given path is used as it is.
  assert run_setup.resolve_dataset_source('pen-binary-v0', None).endswith(
      os.path.join('assets', 'pen-binary-v0'))
  assert run_setup.resolve_dataset_source('door-binary-v0', 'x/y') == 'x/y'


def test_the_embedded_pen_standin_brings_its_tuned_online_actor_rate(tmp_path):
  from iql_acme import config as config_lib  # pylint: disable=g-import-not-at-top
  from iql_acme import run_setup  # pylint: disable=g-import-not-at-top
  tuned = config_lib.STANDIN_OVERRIDES['pen-binary-v0']
  embedded = run_setup.embedded_dataset_dir('pen-binary-v0')
  for dataset in (None, embedded, embedded + os.sep,
                  os.path.join(embedded, 'pen2_sparse.npy')):
    config = run_setup.make_config('pen-binary-v0', dataset=dataset)
    assert (config.online_actor_learning_rate ==
            tuned['online_actor_learning_rate'] != config.actor_learning_rate)
  # Apart from the tuned values, the paper's dexterous-hand preset.
  paper = config_lib.config_for_domain('hand_finetune')
  assert run_setup.make_config('pen-binary-v0') == dataclasses.replace(
      paper, **tuned)
  # A flag wins; other data and the other hand tasks keep the paper's rate.
  assert run_setup.make_config(
      'pen-binary-v0', online_actor_learning_rate=3e-4
  ).online_actor_learning_rate == 3e-4
  assert run_setup.make_config(
      'pen-binary-v0', dataset=str(tmp_path)) == paper
  assert run_setup.make_config('door-binary-v0') == paper


def test_the_committed_door_demonstrator_is_a_bc_format_policy():
  from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(hand_costs.__file__), 'demonstrators',
                      'door-binary-v0.npz')
  policy = bc.bc_policy(dict(np.load(path)))
  env = envs.make_gymnasium_env('door-binary-v0', seed=0)
  observation, _ = env.reset(seed=0)
  action = policy(observation)
  assert action.shape == env.action_space.shape
  assert np.all(np.abs(action) <= 1.0)
