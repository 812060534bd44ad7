"""experiments/finetune_vs_offline.py: the commands it runs and its statistics.

The arms' outputs are written here in the formats the real runs write
(`iql_acme.evaluation.CsvWriter`); the real runs are exercised by
tests/test_finetune_run.py and tests/test_train_offline.py.
"""

import json
import os
import sys

import numpy as np
import pytest

from iql_acme import config as config_lib
from iql_acme import evaluation

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import finetune_vs_offline as fvo  # pylint: disable=g-import-not-at-top,wrong-import-position

OFFLINE, ONLINE, EVERY = 100, 200, 50


def write_eval_csv(path, rows):
  writer = evaluation.CsvWriter(path)
  for row in rows:
    writer.write(row)


def score_row(steps, score, phase=None):
  return {'learner_steps': steps, 'phase': phase, 'normalized_score': score,
          'normalized_score_se': 1.0, 'episodes': 53}


def finetune_rows(offline_end, final):
  """Evaluator rows as the program writes them (evaluations land a few
  updates past the grid; offline_end at exactly offline_steps)."""
  return [score_row(51, offline_end - 5, 'offline'),
          score_row(100, offline_end - 1, 'offline'),
          score_row(OFFLINE, offline_end, 'offline_end'),
          score_row(152, (offline_end + final) / 2, 'online'),
          score_row(204, final - 1, 'online'),
          score_row(OFFLINE + ONLINE + 4, final, 'final')]


def control_rows(offline_end, final):
  return [score_row(50, offline_end - 5), score_row(100, offline_end),
          score_row(150, offline_end), score_row(200, final),
          score_row(250, final), score_row(300, final)]


@pytest.fixture
def experiment(tmp_path):
  args = fvo.parse_args(['--env', 'pen-binary-v0', '--out', str(tmp_path),
                         '--seeds', '0,1,2', '--offline_steps', str(OFFLINE),
                         '--online_steps', str(ONLINE), '--eval_every',
                         str(EVERY)])
  config = fvo.run_config(args)
  finetune = {0: (20, 50), 1: (30, 54), 2: (25, 61)}
  control = {0: (22, 21), 1: (28, 35), 2: (24, 26)}
  workdirs = {'finetune': {}, 'control': {}}
  for seed in args.seeds:
    workdirs['finetune'][seed] = str(tmp_path / 'finetune' / f'seed_{seed}')
    workdirs['control'][seed] = str(tmp_path / 'control' / f'seed_{seed}')
    write_eval_csv(os.path.join(workdirs['finetune'][seed], 'logs',
                                'evaluator.csv'), finetune_rows(*finetune[seed]))
    write_eval_csv(os.path.join(workdirs['control'][seed], 'eval.csv'),
                   control_rows(*control[seed]))
  return args, config, workdirs, finetune, control


def test_summary_statistics(experiment):
  args, config, workdirs, finetune, control = experiment
  results = fvo.summarize(args, config, workdirs)
  arms = results['arms']
  for arm, truth in (('finetune', finetune), ('control', control)):
    for i, key in enumerate(('offline_end', 'final')):
      values = [truth[s][i] for s in args.seeds]
      assert arms[arm][key]['mean'] == pytest.approx(np.mean(values))
      assert arms[arm][key]['se'] == pytest.approx(
          np.std(values, ddof=1) / np.sqrt(len(values)))
      assert arms[arm][key]['n'] == 3
    assert arms[arm]['per_seed']['1']['offline_end_se'] == 1.0
  gain = [finetune[s][1] - control[s][1] for s in args.seeds]
  got = results['gains']['finetune_final_minus_control_final']
  assert got['mean'] == pytest.approx(np.mean(gain))
  assert results['finetuning_helps'] is True


def test_curves_are_aligned_on_the_evaluation_grid(experiment):
  args, config, workdirs, finetune, _ = experiment
  results = fvo.summarize(args, config, workdirs)
  steps = [row[0] for row in results['curves']['finetune']]
  assert steps == [50, 100, 150, 200, 300]
  final = dict((row[0], row[1]) for row in results['curves']['finetune'])[300]
  assert final == pytest.approx(np.mean([finetune[s][1] for s in args.seeds]))
  assert [row[0] for row in results['curves']['control']] == [
      50, 100, 150, 200, 250, 300]


def test_an_end_off_the_grid_keeps_its_step():
  """110,000 updates with evaluations every 20,000: the final is not the
  120,000 point, nor does it replace the 100,000 one."""
  rows = [score_row(100_130, 7.0, 'online'), score_row(110_000, 9.0, 'final'),
          score_row(20_000, 1.0, 'offline_end'), score_row(30_000, 2.0)]
  assert fvo.curve_points(rows, 20_000) == {100_000: 7.0, 110_000: 9.0,
                                            20_000: 1.0, 30_000: 2.0}


def test_no_gain_is_reported_as_such(experiment, tmp_path):
  args, config, workdirs, finetune, _ = experiment
  for seed in args.seeds:  # The fine-tuned policy ends where it started.
    path = os.path.join(workdirs['finetune'][seed], 'logs', 'evaluator.csv')
    os.remove(path)
    start = finetune[seed][0]
    write_eval_csv(path, finetune_rows(start, start))
  results = fvo.summarize(args, config, workdirs)
  assert results['finetuning_helps'] is False


def test_outputs_written(experiment, tmp_path):
  args, config, workdirs, _, _ = experiment
  results = fvo.summarize(args, config, workdirs)
  fvo.write_curves(results, str(tmp_path))
  fvo.plot_curves(results, str(tmp_path / fvo.CURVES_PNG))
  assert os.path.getsize(tmp_path / fvo.CURVES_PNG) > 0
  with open(tmp_path / fvo.CURVES_CSV) as f:
    lines = f.read().splitlines()
  assert lines[0] == 'arm,learner_steps,mean_score,se,seeds'
  assert len(lines) == 1 + 5 + 6
  table = fvo.format_table(results)
  assert 'fine-tuning helps' in table and 'control' in table
  json.dumps(results)  # Serialisable as written.


def test_both_arms_get_the_same_updates_and_schedule(experiment):
  args, config, _, _, _ = experiment
  control = fvo.control_command(args, config, 'DATA', 2, 'OUT')
  flag = lambda name: control[control.index(name) + 1]  # pylint: disable=unnecessary-lambda-assignment
  assert int(flag('--steps')) == OFFLINE + ONLINE  # 1 update per env step.
  assert int(flag('--offline_steps')) == OFFLINE == config.offline_steps
  assert flag('--seed') == '2' and flag('--out') == 'OUT'
  # From the fine-tuned run's learner key: the arms share the offline phase.
  assert flag('--as_finetune_learner') == str(args.num_actors)
  finetune = fvo.finetune_command(args, 1, 'WORKDIR')
  assert f'--offline_steps={OFFLINE}' in finetune
  assert f'--online_steps={ONLINE}' in finetune
  assert '--lp_launch_type=local_mp' in finetune
  assert f'--eval_episodes={evaluation.DEFAULT_EVAL_EPISODES}' in finetune
  assert (f'--final_eval_episodes={evaluation.DEFAULT_EVAL_EPISODES}'
          in finetune)  # Both arms' ends are judged on the same episodes.
  assert flag('--eval_episodes') == str(evaluation.DEFAULT_EVAL_EPISODES)


@pytest.mark.parametrize('argv, message', [
    (['--seeds', 'a,b'], 'comma-separated'),
    (['--seeds', ','], 'empty'),
    (['--online_steps', '0'], 'positive'),
    (['--finetune_runs', 'runs/seed_{seed}'], 'go together'),
    (['--finetune_runs', 'runs/seed_0', '--control_runs', 'c/seed_{seed}'],
     'must contain {seed}'),
])
def test_bad_flags(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    fvo.parse_args(['--out', str(tmp_path), *argv])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_both_arms_get_the_flags_iql_hyperparameters(tmp_path):
  args = fvo.parse_args(['--out', str(tmp_path), '--offline_steps',
                         str(OFFLINE), '--temperature', '1.5',
                         '--online_actor_learning_rate', '3e-05',
                         '--actor_cosine_decay', 'false'])
  config = fvo.run_config(args)
  assert (config.temperature, config.expectile) == (1.5, 0.8)  # 0.8: preset.
  control = fvo.control_command(args, config, 'DATA', 0, 'OUT')
  flag = lambda name: control[control.index(name) + 1]  # pylint: disable=unnecessary-lambda-assignment
  assert (flag('--temperature'), flag('--expectile')) == ('1.5', '0.8')
  assert flag('--online_actor_learning_rate') == '3e-05'
  assert flag('--actor_cosine_decay') == 'False' and not config.actor_cosine_decay
  finetune = fvo.finetune_command(args, 0, 'WORKDIR')
  assert '--actor_cosine_decay=False' in finetune
  assert '--temperature=1.5' in finetune
  assert '--online_actor_learning_rate=3e-05' in finetune
  # Unset, the launcher takes the preset: the value the control is given.
  assert not any(a.startswith('--expectile') for a in finetune)
  other = fvo.parse_args(['--out', str(tmp_path), '--dataset', 'x.npz'])
  control = fvo.control_command(other, fvo.run_config(other), 'D', 0, 'O')
  assert '--online_actor_learning_rate' not in control  # None: not passed.
  # On the embedded stand-in the launcher takes its tuned rate: so does
  # the control, explicitly.
  default = fvo.parse_args(['--out', str(tmp_path)])
  control = fvo.control_command(default, fvo.run_config(default), 'D', 0, 'O')
  tuned = config_lib.STANDIN_OVERRIDES['pen-binary-v0']
  assert flag('--online_actor_learning_rate') == str(
      tuned['online_actor_learning_rate'])


def test_out_of_range_hyperparameter_is_one_line_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    fvo.main(['--out', str(tmp_path), '--expectile', '2'])
  assert 'expectile (tau) must be in (0, 1), got 2.0' in str(exit_info.value)
  assert not os.listdir(tmp_path)  # Nothing launched, nothing written.


def test_summarizes_arms_run_elsewhere_without_running_them(
    experiment, tmp_path, monkeypatch):
  args, config, workdirs, _, _ = experiment
  def no_run(command, what):
    raise AssertionError(f'ran {what}: {command}')
  monkeypatch.setattr(fvo, 'run', no_run)
  out = tmp_path / 'comparison'
  argv = ['--env', args.env, '--seeds', '0,1,2', '--out', str(out),
          '--offline_steps', str(OFFLINE), '--eval_every', str(EVERY),
          '--finetune_runs', str(tmp_path / 'finetune' / 'seed_{seed}'),
          '--control_runs', str(tmp_path / 'control' / 'seed_{seed}')]
  fvo.main(argv)
  with open(out / fvo.RESULTS_FILE) as f:
    results = json.load(f)
  expected = json.loads(json.dumps(fvo.summarize(args, config, workdirs)))
  for key in ('arms', 'gains', 'curves', 'finetuning_helps'):
    assert results[key] == expected[key]
  assert results['runs']['control']['2'] == workdirs['control'][2]
  for name in (fvo.CURVES_CSV, fvo.CURVES_PNG):
    assert (out / name).stat().st_size > 0
  assert results['arms']['finetune']['per_seed']['1']['final_episodes'] == 53
  assert "episodes as in the runs' CSVs" in fvo.format_table(results)

  # A seed without runs: one line naming the missing file.
  with pytest.raises(SystemExit) as exit_info:
    fvo.main([*argv[:3], '0,1,7', *argv[4:]])
  message = str(exit_info.value.code)
  assert 'seed_7' in message and '--control_runs' in message
  assert '\n' not in message
