"""Learning curves of a run as one PNG: `WORKDIR/learning_curve.png`.

Reads the evaluator's CSV (columns `iql_acme.evaluation.EVAL_CSV_FIELDS`)
from either layout:
  distributed run (launch/):          WORKDIR/logs/evaluator.csv
  experiments/train_offline.py:       WORKDIR/eval.csv
and draws the normalized score (the success rate in percent on the binary
hand tasks; the mean return where a task has no score) against environment
steps and against learner steps, with the offline/online boundary marked.
When present, the learner's CSV (WORKDIR/logs/learner.csv, or train.csv)
adds panels of the losses and of updates per second, and the actors' CSVs
(WORKDIR/logs/actor_N.csv) panels of their training returns and of the
measured update : env-step ratio.

Given several WORKDIRs (one command, several seeds), it draws instead the
mean score across them at each evaluation with a +-1 standard-error band
(the s.e. across runs) and each run's curve, and writes the numbers beside
the PNG as CSV (`SEEDS_CSV_FIELDS`, then one score column per run). The
runs must share their evaluation grid (the same count and phases of rows).

Usage: python experiments/plot_run.py WORKDIR [WORKDIR ...] [--out PATH]
"""

import argparse
import csv
import functools
import glob
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

EVAL_PATHS = ('logs/evaluator.csv', 'eval.csv')
LEARNER_PATHS = ('logs/learner.csv', 'train.csv')
ACTOR_GLOB = 'logs/actor*.csv'  # actor_0.csv, actor_1.csv, ...
# Actor CSV columns drawn against each actor's own steps.
ACTOR_PANELS = (('mean_return_last10', 'training return (last 10 episodes)'),
                ('update_to_env_step_ratio', 'updates : env steps'))
# Actor CSV columns that only mean something once an episode has ended.
EPISODE_KEYS = ('mean_return_last10',)
# Standard-error column of each score column (evaluation.EVAL_CSV_FIELDS).
SE_SUFFIX = '_se'
OFFLINE_PHASES = ('offline', 'offline_end')
ONLINE_PHASES = ('online', 'final')
CRITIC_LOSSES = ('critic_loss', 'value_loss')
ACTOR_LOSS = 'actor_loss'
OUTPUT_NAME = 'learning_curve.png'
SEEDS_OUTPUT_NAME = 'learning_curve_seeds.png'  # In the runs' parent folder.
SEEDS_CSV_FIELDS = ('evaluation', 'phase', 'learner_steps', 'actor_steps',
                    'mean', 'se', 'runs')  # Steps: the runs' mean.
PANEL_SIZE = (5.0, 3.6)
MAX_COLUMNS = 3
BOUNDARY_STYLE = dict(color='grey', linestyle='--', linewidth=1.0)

Rows = List[Dict[str, str]]


class RunFilesError(Exception):
  """The work directory holds no evaluation CSV, or one without rows."""


def find(workdir: str, candidates: Sequence[str]) -> Optional[str]:
  for name in candidates:
    path = os.path.join(workdir, name)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
      return path
  return None


def actor_csvs(workdir: str) -> Sequence[str]:
  return sorted(p for p in glob.glob(os.path.join(workdir, ACTOR_GLOB))
                if os.path.getsize(p) > 0)


def plot_actors(ax, actors, key, label):
  for i, rows in enumerate(actors):
    if key in EPISODE_KEYS:  # No return to show before an episode has ended.
      rows = [r for r in rows if number(r.get('episodes')) > 0]
    xs = [number(r.get('actor_steps')) for r in rows]
    ax.plot(xs, [number(r.get(key)) for r in rows], label=f'actor {i}')
  ax.set_xlabel('actor steps')
  ax.set_ylabel(label)
  ax.legend(fontsize='small')


def read_rows(path: str) -> Rows:
  """CSV rows as dicts; header lines repeated by a resumed logger dropped."""
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    return [row for row in reader
            if header and row.get(header[0]) != header[0]]


def number(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def column(rows: Rows, key: str) -> List[float]:
  return [number(row.get(key)) for row in rows]


def has_values(rows: Rows, key: str) -> bool:
  return any(math.isfinite(v) for v in column(rows, key))


def first_key(rows: Rows, keys: Sequence[str]) -> Optional[str]:
  return next((k for k in keys if has_values(rows, k)), None)


def online_boundary(rows: Rows, key: str) -> Optional[float]:
  """The `key` value where the online phase starts: the last offline row's
  (the evaluation of the purely offline policy); None without online rows."""
  offline = [number(r.get(key)) for r in rows if phase_of(r) == 'offline']
  if not any(phase_of(r) == 'online' for r in rows):
    return None
  return max(offline) if offline else 0.0


def phase_of(row) -> Optional[str]:
  """'offline' or 'online': the program also writes offline_end and final."""
  phase = row.get('phase')
  if phase in OFFLINE_PHASES:
    return 'offline'
  return 'online' if phase in ONLINE_PHASES else phase


def score_label(rows: Rows, y_key: str) -> str:
  """What the score axis shows: on the binary tasks the score is the success
  rate in percent."""
  if y_key == 'normalized_score' and has_values(rows, 'success_rate'):
    return 'success rate (%)'
  return y_key.replace('_', ' ')


def plot_band(ax, xs, ys, ses, color, label=None, marker='o-'):
  """A curve with a shaded +-1 standard error band (where SEs are known)."""
  ax.plot(xs, ys, marker, color=color, markersize=3, label=label)
  if any(math.isfinite(v) for v in ses):
    ses = [v if math.isfinite(v) else 0.0 for v in ses]
    ax.fill_between(xs, [y - e for y, e in zip(ys, ses)],
                    [y + e for y, e in zip(ys, ses)], color=color, alpha=0.2,
                    linewidth=0)


def plot_score(ax, rows: Rows, x_key: str, y_key: str, x_label: str):
  ordered = sorted(rows, key=lambda r: number(r.get(x_key)))
  for phase, color in (('offline', 'tab:blue'), ('online', 'tab:orange')):
    part = [r for r in ordered if phase_of(r) == phase]
    if part:
      plot_band(ax, column(part, x_key), column(part, y_key),
                column(part, y_key + SE_SUFFIX), color,
                label=f'{phase} (+-1 s.e.)')
  boundary = online_boundary(rows, x_key)
  if boundary is not None:
    ax.axvline(boundary, label='offline -> online', **BOUNDARY_STYLE)
  if y_key == 'normalized_score':  # Show the 0-100 scale in full.
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, -5.0), max(high, 105.0))
  ax.set_xlabel(x_label)
  ax.set_ylabel(score_label(rows, y_key))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def plot_lines(ax, rows: Rows, x_key: str, y_keys: Sequence[str],
               y_label: str, log_y: bool = False, boundary=None):
  for key in y_keys:
    if has_values(rows, key):
      ax.plot(column(rows, x_key), column(rows, key), linewidth=1.0,
              label=key.replace('_', ' '))
  if boundary is not None:
    ax.axvline(boundary, **BOUNDARY_STYLE)
  if log_y and all(v > 0 for k in y_keys for v in column(rows, k)
                   if math.isfinite(v)):
    ax.set_yscale('log')
  ax.set_xlabel(x_key.replace('_', ' '))
  ax.set_ylabel(y_label)
  ax.grid(alpha=0.3)
  if len(y_keys) > 1:
    ax.legend(fontsize=8)


def plot_run(workdir: str, out: Optional[str] = None) -> str:
  """Draws the run's curves; returns the PNG's path."""
  eval_path = find(workdir, EVAL_PATHS)
  if eval_path is None:
    raise RunFilesError(f'no evaluation CSV in {workdir!r} (looked for '
                        f'{" or ".join(EVAL_PATHS)})')
  evals = read_rows(eval_path)
  if not evals:
    raise RunFilesError(f'{eval_path} has no rows yet')
  score_key = first_key(evals, ('normalized_score', 'mean_return'))
  if score_key is None:
    raise RunFilesError(f'{eval_path} has no normalized_score or mean_return')
  learner_path = find(workdir, LEARNER_PATHS)
  learner = read_rows(learner_path) if learner_path else []
  actors = [read_rows(path) for path in actor_csvs(workdir)]

  panels = []
  online = [r for r in evals if phase_of(r) == 'online']
  if online and has_values(online, 'actor_steps'):
    # Against environment steps the offline phase is one point, at 0 steps:
    # the policy fine-tuning starts from (the offline_end evaluation).
    offline = [r for r in evals if phase_of(r) == 'offline']
    start = [max(offline, key=lambda r: (number(r.get('learner_steps')),
                                         r.get('phase') == 'offline_end'))
             ] if offline else []
    panels.append(lambda ax: plot_score(ax, start + online, 'actor_steps',
                                        score_key, 'environment steps'))
  panels.append(lambda ax: plot_score(ax, evals, 'learner_steps', score_key,
                                      'learner steps'))
  boundary = online_boundary(evals, 'learner_steps')
  if has_values(learner, 'learner_steps'):
    # Critic and value losses are positive and shrink by orders of
    # magnitude (log scale); the actor's NLL may be negative (linear).
    losses = [k for k in CRITIC_LOSSES if has_values(learner, k)]
    if losses:
      panels.append(lambda ax: plot_lines(ax, learner, 'learner_steps', losses,
                                          'loss', log_y=True,
                                          boundary=boundary))
    if has_values(learner, ACTOR_LOSS):
      panels.append(lambda ax: plot_lines(ax, learner, 'learner_steps',
                                          [ACTOR_LOSS], 'actor loss',
                                          boundary=boundary))
    # A logger's first row has no interval to measure a rate over (0).
    timed = [r for r in learner if number(r.get('updates_per_s')) > 0]
    if timed:
      panels.append(lambda ax: plot_lines(ax, timed, 'learner_steps',
                                          ['updates_per_s'], 'updates / s',
                                          boundary=boundary))
  actors = [rows for rows in actors if has_values(rows, 'actor_steps')]
  for key, label in ACTOR_PANELS:
    if any(has_values(rows, key) for rows in actors):
      panels.append(functools.partial(plot_actors, actors=actors, key=key,
                                      label=label))

  columns = min(len(panels), MAX_COLUMNS)
  rows = math.ceil(len(panels) / columns)
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(PANEL_SIZE[0] * columns,
                                    PANEL_SIZE[1] * rows))
  for ax, draw in zip(axes.flat, panels):
    draw(ax)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  out = out or os.path.join(workdir, OUTPUT_NAME)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def seed_table(workdirs: Sequence[str]):
  """(One row per evaluation: mean steps, mean score, s.e. across runs;
  the score axis's label)."""
  runs = []
  for workdir in workdirs:
    path = find(workdir, EVAL_PATHS)
    if path is None:
      raise RunFilesError(f'no evaluation CSV in {workdir!r}')
    runs.append(read_rows(path))
  phases = [[r.get('phase') for r in rows] for rows in runs]
  if any(p != phases[0] for p in phases) or not phases[0]:
    raise RunFilesError(
        'the runs differ in their evaluations (count or phases: '
        + ', '.join(f'{w}: {len(p)}' for w, p in zip(workdirs, phases))
        + '); pass runs of the same command, finished')
  score_key = first_key(runs[0], ('normalized_score', 'mean_return'))
  table = []
  for i, phase in enumerate(phases[0]):
    scores = [number(rows[i].get(score_key)) for rows in runs]
    mean = sum(scores) / len(scores)
    se = (math.sqrt(sum((s - mean) ** 2 for s in scores) /
                    (len(scores) - 1) / len(scores))
          if len(scores) > 1 else math.nan)
    row = {'evaluation': i, 'phase': phase, 'mean': mean, 'se': se,
           'runs': len(scores)}
    for key in ('learner_steps', 'actor_steps'):
      row[key] = sum(number(rows[i].get(key)) for rows in runs) / len(runs)
    row.update({os.path.basename(os.path.normpath(w)): s
                for w, s in zip(workdirs, scores)})
    table.append(row)
  return table, score_label(runs[0], score_key)


def plot_seeds(workdirs: Sequence[str], out: Optional[str] = None) -> str:
  """Mean curve of several runs (+-1 s.e. across them); the PNG's path."""
  table, y_label = seed_table(workdirs)
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  fig, axes = plt.subplots(1, 2, figsize=(PANEL_SIZE[0] * 2, PANEL_SIZE[1]))
  for ax, x_key, x_label in ((axes[0], 'actor_steps', 'environment steps'),
                             (axes[1], 'learner_steps', 'learner steps')):
    rows = table
    if x_key == 'actor_steps':  # Offline: one point, the offline end.
      rows = [r for r in table if phase_of(r) == 'online' or
              r['phase'] == 'offline_end']
    xs = [r[x_key] for r in rows]
    for name in names:
      ax.plot(xs, [r[name] for r in rows], color='grey', linewidth=0.7,
              alpha=0.6)
    plot_band(ax, xs, [r['mean'] for r in rows], [r['se'] for r in rows],
              'tab:orange', label=f'mean of {len(names)} runs (+-1 s.e.)')
    boundary = online_boundary(table, x_key)
    if boundary is not None:
      ax.axvline(boundary, label='offline -> online', **BOUNDARY_STYLE)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  parent = os.path.dirname(os.path.abspath(os.path.normpath(workdirs[0])))
  fig.suptitle(f'{os.path.basename(parent)}: {", ".join(names)}')
  fig.tight_layout()
  out = out or os.path.join(parent, SEEDS_OUTPUT_NAME)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  with open(os.path.splitext(out)[0] + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, list(SEEDS_CSV_FIELDS) + names)
    writer.writeheader()
    writer.writerows(table)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdir', nargs='+',
                      help='run directory (see the module doc); several: '
                      'their mean curve')
  parser.add_argument('--out', help=f'PNG path (default WORKDIR/{OUTPUT_NAME};'
                      f' for several runs, {SEEDS_OUTPUT_NAME} in the first '
                      "one's parent folder, with a .csv beside it)")
  args = parser.parse_args(argv)
  try:
    if len(args.workdir) == 1:
      print(plot_run(args.workdir[0], args.out))
    else:
      print(plot_seeds(args.workdir, args.out))
  except (RunFilesError, OSError) as e:
    print(f'plot_run.py: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
