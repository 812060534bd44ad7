"""experiments/make_pen_rl_demos.py: a stand-in demonstrated by a run's policy."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from acme.jax import savers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import make_pen_rl_demos  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import envs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import networks as networks_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import program  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import run_setup  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.data import awac  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import awac_format  # pylint: disable=g-import-not-at-top,wrong-import-position

ENV = 'pen-binary-v0'


def _checkpointed_run(workdir, steps=7):
  """A run folder holding a learner checkpoint as LearnerNode writes one
  (savers.save_to_path + checkpoints/state.json); untrained networks."""
  config = run_setup.make_config(ENV)
  networks = networks_lib.make_networks(
      networks_lib.spec_from_dims(45, 24), config)
  state = training.init_training_state(
      networks, training.make_optimizers(config), jax.random.PRNGKey(3))
  state = state._replace(steps=np.int32(steps))
  name = f'learner-{steps}-1'
  savers.save_to_path(os.path.join(program.checkpoint_dir(workdir), name),
                      jax.device_get(state))
  with open(os.path.join(program.checkpoint_dir(workdir),
                         program.STATE_FILE), 'w') as f:
    json.dump({'learner': name, 'learner_steps': steps}, f)
  return networks, state


def test_checkpoint_policy_is_the_runs_evaluation_policy(tmp_path):
  networks, state = _checkpointed_run(str(tmp_path))
  params, steps = program.load_checkpoint_policy(str(tmp_path))
  assert steps == 7
  as_bc, _ = make_pen_rl_demos.checkpoint_policy(str(tmp_path))
  policy = bc.bc_policy(as_bc)
  observation = np.random.default_rng(0).normal(size=45).astype(np.float32)
  want = networks_lib.make_evaluation_policy(networks)(
      state.policy_params, jax.random.PRNGKey(9), observation[None])[0]
  np.testing.assert_allclose(policy(observation), want, rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         jax.device_get(state.policy_params))


def test_a_folder_without_checkpoint_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match='holds no learner checkpoint'):
    program.load_checkpoint_policy(str(tmp_path))
  with pytest.raises(SystemExit, match='^error: .*holds no learner checkpoint'):
    make_pen_rl_demos.main(['--policy_workdir', str(tmp_path),
                            '--out', str(tmp_path / 'o'),
                            '--work_dir', str(tmp_path / 'w')])


def _all_episodes_succeed(monkeypatch):
  """An untrained policy never holds the goal: mark every episode a success
  so the whole pipeline runs (only the success test is replaced)."""
  monkeypatch.setattr(envs, 'episode_success', lambda name, achieved: True)


def _make_from_a_run(tmp_path, monkeypatch, *flags):
  """The pipeline on an untrained run's policy, 3 demos, 20 BC steps;
  returns (the data folder, the work folder)."""
  _checkpointed_run(str(tmp_path / 'run'))
  _all_episodes_succeed(monkeypatch)
  out, work = tmp_path / 'data', tmp_path / 'work'
  make_pen_rl_demos.main([
      '--policy_workdir', str(tmp_path / 'run'), '--out', str(out),
      '--work_dir', str(work), '--num_demos', '3', '--bc_steps', '20',
      '--num_eval_episodes', '2', '--gate', '0.5', *flags])
  return out, work


def test_writes_awac_files_that_the_loader_reads(tmp_path, monkeypatch):
  out, work = _make_from_a_run(tmp_path, monkeypatch,
                               '--num_bc_episodes', '4')
  meta = json.load(open(out / 'meta.json'))
  assert meta['num_demos'] == 3 and meta['demonstrator']['episodes'] == 3
  assert meta['demonstrator']['learner_steps'] == 7
  assert meta['bc_gate']['passed'] and meta['num_bc_episodes'] == 4
  fits = meta['bc_gate']['each_fit']
  assert [f['bc_seed'] for f in fits] == [0, 1, 2]
  assert meta['bc_gate']['bc_on_demos_alone']['success_rate'] == pytest.approx(
      np.mean([f['success_rate'] for f in fits]))
  demos = awac_format.load_paths(str(out / 'pen2_sparse.npy'))
  rollouts = awac_format.load_paths(str(out / 'pen_bc_sparse4.npy'))
  assert len(demos) == 3 and len(rollouts) == 4
  assert meta['demo_transitions'] == sum(len(p['actions']) for p in demos)
  # The project's AWAC loader takes the folder as a dataset.
  data = awac.read_awac(awac.awac_files_in(str(out)))
  assert data.size == meta['demo_transitions'] + meta['bc_transitions']
  assert (work / 'demonstrator_by_angle.png').exists()

  # The demonstrator kept beside the data rewrites the same files.
  again = tmp_path / 'data2'
  make_pen_rl_demos.main([
      '--policy_npz', str(out / 'demonstrator_policy.npz'), '--out',
      str(again), '--work_dir', str(tmp_path / 'work2'), '--num_demos', '3',
      '--bc_steps', '20', '--num_eval_episodes', '2',
      '--num_bc_episodes', '4'])
  for name in ('pen2_sparse.npy', 'pen_bc_sparse4.npy',
               'demonstrator_policy.npz'):
    assert (out / name).read_bytes() == (again / name).read_bytes(), name
  meta2 = json.load(open(again / 'meta.json'))
  assert meta2['demonstrator']['policy_npz'] == str(
      out / 'demonstrator_policy.npz')

  # A BC policy demonstrates too (filtered imitation, repeated); without
  # rollouts this time, the folder's rollouts of another BC policy go.
  make_pen_rl_demos.main([
      '--policy_npz', str(work / 'bc_params.npz'), '--out', str(again),
      '--work_dir', str(tmp_path / 'work3'), '--num_demos', '2',
      '--bc_steps', '5', '--num_eval_episodes', '1', '--num_bc_episodes',
      '0'])
  assert not (again / 'pen_bc_sparse4.npy').exists()
  assert len(awac_format.load_paths(str(again / 'pen2_sparse.npy'))) == 2


def test_too_few_successes_is_one_clear_error(tmp_path):
  _checkpointed_run(str(tmp_path / 'run'))
  with pytest.raises(SystemExit, match=r'^error: the demonstrator succeeded '
                     r'in 0 of 2 episodes.*raise --max_demo_episodes'):
    make_pen_rl_demos.main([
        '--policy_workdir', str(tmp_path / 'run'), '--out',
        str(tmp_path / 'o'), '--work_dir', str(tmp_path / 'w'),
        '--num_demos', '2', '--max_demo_episodes', '2',
        '--num_eval_episodes', '1'])


@pytest.mark.parametrize('flags, message', [
    ([], 'one of the arguments --policy_workdir --policy_npz is required'),
    (['--policy_workdir', 'nowhere'], 'is not a folder'),
    (['--policy_npz', 'nowhere.npz'], 'is not a file'),
    (['--policy_workdir', '.', '--num_demos', '0'], 'at least 1'),
    (['--policy_workdir', '.', '--num_demos', '5',
      '--max_demo_episodes', '4'], 'must be at least --num_demos'),
    (['--policy_workdir', '.', '--bc_noise_stds', '0.1,x'],
     'comma-separated numbers'),
    (['--policy_workdir', '.', '--bc_seeds', '0,a'],
     'comma-separated integers'),
])
def test_bad_flags_are_one_clear_error(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    make_pen_rl_demos.parse_args(flags + ['--out', str(tmp_path)])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_rollout_demos_rolls_out_a_fit_on_the_first_k_demos(tmp_path,
                                                           monkeypatch):
  out, work = _make_from_a_run(tmp_path, monkeypatch, '--num_bc_episodes',
                               '2', '--rollout_demos', '2')
  meta = json.load(open(out / 'meta.json'))
  assert meta['rollout_policy']['demos'] == 2
  assert meta['rollout_policy']['episodes'] == 2
  # The rolled-out policy is BC (first --bc_seeds entry) on the first 2
  # demos, not the gate's fit on all 3.
  demos = awac_format.load_paths(str(out / 'pen2_sparse.npy'))
  config = bc.BCConfig(num_steps=20, input_noise=0.1)
  # Demo observations are dicts in AWAC's layout.
  observations = [np.stack([o['observation'] for o in p['observations']])
                  for p in demos[:2]]
  want = bc.fit_bc(np.concatenate(observations),
                   np.concatenate([p['actions'] for p in demos[:2]]),
                   config, seed=0, log_fn=lambda _: None)
  got = dict(np.load(work / 'bc_rollout_params.npz'))
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
  gate_fit = dict(np.load(work / 'bc_params.npz'))
  assert not np.allclose(gate_fit['w0'], got['w0'])


@pytest.mark.parametrize('value', ['0', '4'])
def test_rollout_demos_outside_one_to_num_demos_is_one_clear_error(
    tmp_path, capsys, value):
  with pytest.raises(SystemExit) as exit_info:
    make_pen_rl_demos.parse_args(['--policy_workdir', '.', '--num_demos', '3',
                                  '--rollout_demos', value, '--out',
                                  str(tmp_path)])
  assert exit_info.value.code == 2
  assert f'--rollout_demos must be in [1, --num_demos 3], got {value}' in (
      capsys.readouterr().err)
