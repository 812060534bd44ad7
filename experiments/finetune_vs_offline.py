"""Does online fine-tuning help? Fine-tuning against its control, several seeds.

Per seed, two arms with the same config, the same gradient-update count and
the same learning-rate schedules:
  finetune  offline IQL, then online fine-tuning through the real Launchpad
            program (launch/run_finetune.py --lp_launch_type=local_mp):
            offline_steps updates, then online_steps environment steps at
            updates_per_env_step updates each;
  control   the same number of updates on the offline data alone
            (experiments/train_offline.py, with offline_steps as the
            schedule's offline phase; a process per seed: on a CPU its
            vmapped --seeds mode adds no throughput), from the fine-tuned
            run's learner key: the same initial parameters and offline
            batches, so the arms share their offline end.
Both are evaluated on the same fixed start states (iql_acme.evaluation).

  python experiments/finetune_vs_offline.py --env pen-binary-v0 --seeds 0,1,2 \
      --out out/finetune_vs_offline/pen-binary-v0

Arms run elsewhere (by hand, on other machines, with other flags) are
summarized without running anything: `--finetune_runs` and `--control_runs`
name their directories with `{seed}` for the seed, e.g.
  python experiments/finetune_vs_offline.py --env pen-binary-v0 --seeds 0,1,2 \
      --finetune_runs 'out/runs/seed_{seed}' --control_runs 'out/control/seed_{seed}' \
      --offline_steps 25000 --eval_every 25000 --out out/comparison
(--offline_steps is where the control's offline end is read; --eval_every
the grid the curves are drawn on).

Writes OUT/results.json (per-seed and mean +- standard error scores at the
offline end and at the end, for both arms, and the paired gains), OUT/curves.csv
and OUT/curves.png (mean curves with +-1 s.e. bands). A rerun skips the arms
whose outputs exist.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Sequence

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cli
import numpy as np

from iql_acme import evaluation
import plot_run
# pylint: enable=g-import-not-at-top,wrong-import-position

RUN_FINETUNE = os.path.join(REPO, 'launch', 'run_finetune.py')
TRAIN_OFFLINE = os.path.join(REPO, 'experiments', 'train_offline.py')
FINETUNE_EVAL_CSV = os.path.join('logs', 'evaluator.csv')
CONTROL_EVAL_CSV = 'eval.csv'
SCORE = 'normalized_score'
ARMS = ('finetune', 'control')
ARM_STYLE = {'finetune': ('tab:orange', 'offline IQL + online fine-tuning'),
             'control': ('tab:blue', 'control: same updates, offline data only')}
RESULTS_FILE, CURVES_CSV, CURVES_PNG = 'results.json', 'curves.csv', 'curves.png'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--env', default='pen-binary-v0')
  parser.add_argument('--dataset', default=None,
                      help='dataset path or D4RL name (default: as '
                      'launch/run_finetune.py picks it)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--seeds', type=cli.int_list, default='0,1,2')
  parser.add_argument('--offline_steps', type=int, default=None,
                      help='default: the domain preset')
  parser.add_argument('--online_steps', type=int, default=20_000)
  parser.add_argument('--eval_every', type=int, default=5_000)
  parser.add_argument('--eval_episodes', type=int,
                      default=evaluation.DEFAULT_EVAL_EPISODES)
  parser.add_argument('--num_actors', type=int, default=2)
  parser.add_argument('--batch_size', type=int, default=None)
  cli.add_iql_flags(parser, applies_to='both arms')
  parser.add_argument('--lp_launch_type', default='local_mp')
  parser.add_argument('--finetune_runs', default=None, metavar='PATTERN',
                      help="summarize existing runs, run nothing: the "
                      "fine-tuned runs' workdirs, {seed} for the seed")
  parser.add_argument('--control_runs', default=None, metavar='PATTERN',
                      help="with --finetune_runs: the controls' train_offline "
                      'output directories, {seed} for the seed')
  args = parser.parse_args(argv)
  patterns = (args.finetune_runs, args.control_runs)
  if (patterns[0] is None) != (patterns[1] is None):
    parser.error('--finetune_runs and --control_runs go together: pass both '
                 '(or neither, to run the arms)')
  for flag, pattern in zip(('finetune_runs', 'control_runs'), patterns):
    if pattern is not None and '{seed}' not in pattern:
      parser.error(f'--{flag} must contain {{seed}}, e.g. out/runs/seed_{{seed}}; '
                   f'got {pattern!r}')
  if not args.seeds:
    parser.error('--seeds is empty; pass e.g. --seeds 0,1,2')
  for flag in ('online_steps', 'eval_every', 'eval_episodes', 'num_actors'):
    if getattr(args, flag) <= 0:
      parser.error(f'--{flag} must be positive, got {getattr(args, flag)}')
  return args


def run_config(args):
  """The config both arms train with (the launcher's preset and overrides)."""
  from iql_acme import run_setup  # pylint: disable=g-import-not-at-top
  return run_setup.make_config(args.env, dataset=args.dataset,
                               offline_steps=args.offline_steps,
                               online_steps=args.online_steps,
                               batch_size=args.batch_size,
                               **{f: getattr(args, f) for f in cli.IQL_FLAGS})


def finetune_command(args, seed: int, workdir: str) -> List[str]:
  command = [sys.executable, RUN_FINETUNE, f'--env={args.env}',
             f'--seed={seed}', f'--workdir={workdir}',
             f'--online_steps={args.online_steps}',
             f'--eval_every={args.eval_every}',
             f'--eval_episodes={args.eval_episodes}',
             # The control evaluates every checkpoint with eval_episodes:
             # so does this arm, its offline end and end included.
             f'--final_eval_episodes={args.eval_episodes}',
             f'--num_actors={args.num_actors}',
             f'--lp_launch_type={args.lp_launch_type}']
  for flag in ('dataset', 'offline_steps', 'batch_size') + cli.IQL_FLAGS:
    if getattr(args, flag) is not None:
      command.append(f'--{flag}={getattr(args, flag)}')
  return command


def control_command(args, config, dataset: str, seed: int,
                    out: str) -> List[str]:
  total_updates = config.offline_steps + round(
      config.updates_per_env_step * args.online_steps)
  return [sys.executable, TRAIN_OFFLINE, '--env', args.env,
          '--dataset', dataset, '--out', out,
          '--steps', str(total_updates),
          '--offline_steps', str(config.offline_steps),
          '--seed', str(seed),
          '--eval_every', str(args.eval_every),
          '--eval_episodes', str(args.eval_episodes),
          '--batch_size', str(config.batch_size),
          # The run's own learner key: both arms share the offline phase.
          '--as_finetune_learner', str(args.num_actors),
          *[x for f in cli.IQL_FLAGS if getattr(config, f) is not None
            for x in (f'--{f}', str(getattr(config, f)))]]


def run(command: Sequence[str], what: str):
  print(f'== {what}: {" ".join(command)}', flush=True)
  started = time.time()
  result = subprocess.run(command, check=False)
  if result.returncode != 0:
    sys.exit(f'error: {what} failed with exit code {result.returncode}; '
             'fix it and rerun the same command (finished arms are skipped)')
  return time.time() - started


def rows_of(path: str) -> List[Dict[str, str]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing; rerun this script')
  return plot_run.read_rows(path)


def offline_end_and_final(rows, offline_steps: int) -> Dict[str, float]:
  """The scores of the policy at the end of the offline phase and at the end.

  For the finetune arm these are its `offline_end` and `final` rows; the
  control writes no phases, so its offline end is the evaluation at
  offline_steps (the last at or before it) and its end the last row.
  """
  def steps(row):
    return plot_run.number(row['learner_steps'])
  by_phase = {r.get('phase'): r for r in rows}
  offline_end = by_phase.get('offline_end') or max(
      (r for r in rows if steps(r) <= offline_steps), key=steps)
  final = by_phase.get('final') or max(rows, key=steps)
  number = plot_run.number
  return {'offline_end': number(offline_end[SCORE]),
          'offline_end_se': number(offline_end.get(SCORE + '_se')),
          'offline_end_episodes': number(offline_end.get('episodes')),
          'final': number(final[SCORE]),
          'final_se': number(final.get(SCORE + '_se')),
          'final_episodes': number(final.get('episodes')),
          'final_learner_steps': steps(final)}


def mean_and_se(values: Sequence[float]) -> Dict[str, float]:
  return {'mean': float(np.mean(values)),
          'se': evaluation.standard_error(values), 'n': len(values)}


# A launcher evaluation lands a few updates past its multiple of eval_every
# (it waits for the learner); rows within this fraction of the grid snap to it.
GRID_SNAP_FRACTION = 0.25


def curve_points(rows, eval_every: int) -> Dict[int, float]:
  """Score by learner step, snapped to the evaluation grid; rows off the
  grid (the offline end or the final at a step that is no multiple of
  eval_every) keep their own step."""
  points = {}
  for row in rows:  # A later row at the same point wins.
    step = plot_run.number(row['learner_steps'])
    grid = round(step / eval_every) * eval_every
    snapped = abs(step - grid) <= GRID_SNAP_FRACTION * eval_every
    points[int(grid if snapped else step)] = plot_run.number(row[SCORE])
  return points


def mean_curve(per_seed: Sequence[Dict[int, float]]):
  """(steps, mean, se, n) over the grid points every seed has."""
  common = sorted(set.intersection(*(set(p) for p in per_seed)))
  out = []
  for step in common:
    values = [p[step] for p in per_seed]
    out.append((step, float(np.mean(values)),
                evaluation.standard_error(values), len(values)))
  return out


def summarize(args, config, workdirs: Dict[str, Dict[int, str]]) -> dict:
  """results.json's content, from the arms' evaluation CSVs."""
  results = {'env': args.env, 'seeds': args.seeds,
             'offline_steps': config.offline_steps,
             'online_steps': args.online_steps,
             'updates_per_env_step': config.updates_per_env_step,
             'eval_episodes': args.eval_episodes,
             'score': ('success rate (%)' if 'binary' in args.env else
                       'normalized score'),
             'arms': {}, 'curves': {}}
  for arm in ARMS:
    csv_name = FINETUNE_EVAL_CSV if arm == 'finetune' else CONTROL_EVAL_CSV
    rows = {seed: rows_of(os.path.join(workdirs[arm][seed], csv_name))
            for seed in args.seeds}
    per_seed = {seed: offline_end_and_final(rows[seed], config.offline_steps)
                for seed in args.seeds}
    results['arms'][arm] = {
        'per_seed': {str(s): v for s, v in per_seed.items()},
        'offline_end': mean_and_se([v['offline_end'] for v in per_seed.values()]),
        'final': mean_and_se([v['final'] for v in per_seed.values()])}
    results['curves'][arm] = mean_curve(
        [curve_points(rows[s], args.eval_every) for s in args.seeds])
  finetune, control = (results['arms'][a]['per_seed'] for a in ARMS)
  seeds = [str(s) for s in args.seeds]
  gain_over_offline = [finetune[s]['final'] - finetune[s]['offline_end']
                       for s in seeds]
  gain_over_control = [finetune[s]['final'] - control[s]['final']
                       for s in seeds]
  results['gains'] = {
      'finetune_final_minus_its_offline_end': mean_and_se(gain_over_offline),
      'finetune_final_minus_control_final': mean_and_se(gain_over_control)}
  # The criterion: above both, by more than the standard errors.
  results['finetuning_helps'] = all(
      g['mean'] > g['se'] for g in results['gains'].values())
  return results


def write_curves(results: dict, out: str):
  with open(os.path.join(out, CURVES_CSV), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['arm', 'learner_steps', 'mean_score', 'se', 'seeds'])
    for arm in ARMS:
      for row in results['curves'][arm]:
        writer.writerow([arm, *row])


def plot_curves(results: dict, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm in ARMS:
    color, label = ARM_STYLE[arm]
    curve = results['curves'][arm]
    if curve:
      steps, means, ses, _ = zip(*curve)
      plot_run.plot_band(ax, steps, means, ses, color, label=label)
  ax.axvline(results['offline_steps'], label='offline -> online',
             **plot_run.BOUNDARY_STYLE)
  seeds = len(results['seeds'])
  ax.set_title(f'{results["env"]}: mean of {seeds} seeds, +-1 s.e. across '
               f'seeds; {episodes_note(results)}',
               fontsize=9)
  ax.set_xlabel('learner steps (gradient updates)')
  ax.set_ylabel(results['score'])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _count(value) -> str:
  return '?' if value is None or np.isnan(value) else f'{value:.0f}'


def episodes_note(results: dict) -> str:
  episodes = results['eval_episodes']
  return (f'{episodes} episodes per evaluation' if episodes
          else "episodes as in the runs' CSVs")


def format_table(results: dict) -> str:
  lines = [f'{results["env"]} ({results["score"]}; seeds {results["seeds"]}, '
           f'{episodes_note(results)})',
           'arm        seed  offline_end        final']
  for arm in ARMS:
    for seed, v in results['arms'][arm]['per_seed'].items():
      lines.append(f'{arm:<10} {seed:>4}  {v["offline_end"]:6.1f} +- '
                   f'{v["offline_end_se"]:4.1f}  {v["final"]:6.1f} +- '
                   f'{v["final_se"]:4.1f}  (episodes: '
                   f'{_count(v.get("offline_end_episodes"))}, '
                   f'{_count(v.get("final_episodes"))})')
    a = results['arms'][arm]
    lines.append(f'{arm:<10} mean  {a["offline_end"]["mean"]:6.1f} +- '
                 f'{a["offline_end"]["se"]:4.1f}  {a["final"]["mean"]:6.1f} +- '
                 f'{a["final"]["se"]:4.1f}')
  for name, g in results['gains'].items():
    lines.append(f'{name}: {g["mean"]:+.1f} +- {g["se"]:.1f} (n={g["n"]})')
  lines.append(f'fine-tuning helps (both gains > 1 s.e.): '
               f'{results["finetuning_helps"]}')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  from iql_acme import run_setup  # pylint: disable=g-import-not-at-top
  try:
    config = run_config(args)
    dataset = run_setup.resolve_dataset_source(args.env, args.dataset)
  except ValueError as e:
    sys.exit(f'error: {e}')
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  if args.finetune_runs is not None:
    summarize_existing(args, config, out)
    return
  workdirs = {'finetune': {s: os.path.join(out, 'finetune', f'seed_{s}')
                           for s in args.seeds},
              'control': {s: os.path.join(out, 'control', f'seed_{s}')
                          for s in args.seeds}}
  started = time.time()
  pending = [s for s in args.seeds if not os.path.exists(
      os.path.join(workdirs['finetune'][s], 'summary.json'))]
  for i, seed in enumerate(pending):
    seconds = run(finetune_command(args, seed, workdirs['finetune'][seed]),
                  f'finetune seed {seed}')
    left = len(pending) - i - 1
    print(f'== finetune seed {seed} took {seconds:.0f}s; {left} left, ETA '
          f'{left * seconds:.0f}s', flush=True)
  for seed in args.seeds:
    workdir = workdirs['control'][seed]
    if not os.path.exists(os.path.join(workdir, 'summary.json')):
      run(control_command(args, config, dataset, seed, workdir),
          f'control seed {seed}')
  results = summarize(args, config, workdirs)
  results['wall_time_s'] = time.time() - started
  results['commands'] = {
      'finetune': finetune_command(args, args.seeds[0],
                                   workdirs['finetune'][args.seeds[0]]),
      'control': control_command(args, config, dataset, args.seeds[0],
                                 workdirs['control'][args.seeds[0]])}
  write_results(results, out)


def summarize_existing(args, config, out: str):
  """results.json, curves.csv and curves.png of arms run elsewhere."""
  workdirs = {arm: {s: pattern.format(seed=s)
                    for s in args.seeds}
              for arm, pattern in zip(ARMS, (args.finetune_runs,
                                             args.control_runs))}
  try:
    results = summarize(args, config, workdirs)
  except FileNotFoundError as e:
    sys.exit(f'error: {e.args[0].split(";")[0]}; check --finetune_runs, '
             '--control_runs and --seeds')
  results['eval_episodes'] = None  # The runs' own: see each row's count.
  results['runs'] = {arm: {str(s): d for s, d in dirs.items()}
                     for arm, dirs in workdirs.items()}
  write_results(results, out)


def write_results(results: dict, out: str):
  with open(os.path.join(out, RESULTS_FILE), 'w') as f:
    json.dump(results, f, indent=2)
  write_curves(results, out)
  plot_curves(results, os.path.join(out, CURVES_PNG))
  print(format_table(results))
  print(f'wrote {os.path.join(out, RESULTS_FILE)}, {CURVES_CSV}, {CURVES_PNG}')


if __name__ == '__main__':
  main()
