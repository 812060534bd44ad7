"""A pen-binary-v0 stand-in whose demonstrator is an RL-trained policy.

`make_pen_demos.py`'s MPPI demonstrator succeeds by sampling afresh at every
state: its average action at a state is nearly BC's own
(`pen_bc_probes.py label_noise`), so BC on its demos stalls near 34%. D4RL's
Adroit expert data came from an RL-trained policy instead (DAPG). Here the
demonstrator is an IQL policy that this project fine-tuned online (the last
checkpoint of a `launch/run_finetune.py` run): a function of the observation
by construction, which a 2x256 MLP can imitate.

Pipeline (AWAC's layout, as `make_pen_demos.py` writes it):
  1. the demonstrator (the deterministic policy mean) is scored on the
     gate's fresh targets;
  2. demonstrator episodes from env seeds --seed + i, kept when the goal
     holds for more than 20 of the 100 steps, until --num_demos succeed:
     `pen2_sparse.npy`;
  3. BC (2x256 MLP) on those demos alone, one fit per --bc_seeds entry,
     each scored noise-free on the same --num_eval_episodes fresh targets:
     issue #7's gate is their mean success >= 0.5;
  4. if BC passes --gate, --num_bc_episodes rollouts of the first BC fit
     with Gaussian action noise (std cycled through --bc_noise_stds):
     `pen_bc_sparse4.npy`; and `meta.json`.

  python experiments/make_pen_rl_demos.py --policy_workdir out/rl_demo/pen_seed2 \\
      --out out/pen_d --work_dir out/pen_d_work --num_demos 100 --num_bc_episodes 300

Writes per-episode CSVs and a PNG of success by target angle to --work_dir.
Deterministic given the checkpoint and --seed.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cli
import make_pen_demos as pen
import numpy as np
from tqdm import tqdm

from iql_acme import envs
from iql_acme import program
from iql_acme.standin import awac_format
from iql_acme.standin import bc
# pylint: enable=g-import-not-at-top,wrong-import-position

DEMONSTRATOR_FILE = 'demonstrator_policy.npz'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  demonstrator = parser.add_mutually_exclusive_group(required=True)
  demonstrator.add_argument(
      '--policy_workdir', help='--workdir of a pen-binary-v0 '
      'run_finetune.py run; its last checkpoint\'s policy demonstrates')
  demonstrator.add_argument(
      '--policy_npz', help='or a policy in BC\'s .npz format: the '
      'demonstrator_policy.npz this script writes to --out (regenerates '
      'that data), or a bc_params.npz from its --work_dir')
  parser.add_argument('--out', required=True, help='folder for the .npy files')
  parser.add_argument('--work_dir', default='out/pen_rl_standin',
                      help='CSVs, the PNG and the BC parameters')
  parser.add_argument('--num_demos', type=int, default=100,
                      help='successful demonstrator episodes to keep')
  parser.add_argument('--max_demo_episodes', type=int, default=None,
                      help='cap on demonstrator episodes (default 5 x '
                      'num_demos)')
  parser.add_argument('--bc_steps', type=int, default=30_000)
  parser.add_argument('--bc_input_noise', type=float, default=0.1)
  parser.add_argument('--bc_seeds', type=cli.int_list, default='0,1,2',
                      help='one BC fit per seed; the gate takes their mean '
                      'and the first one is rolled out')
  parser.add_argument('--num_eval_episodes', type=int, default=50,
                      help='fresh-target episodes of the BC success gate')
  parser.add_argument('--gate', type=float, default=pen.ACCEPTANCE_SUCCESS_RATE,
                      help='BC success needed before BC rollouts are made')
  parser.add_argument('--num_bc_episodes', type=int, default=300)
  parser.add_argument('--bc_noise_stds', type=cli.float_list,
                      default='0.1,0.2,0.3,0.5',
                      help='Gaussian action noise of BC rollouts, cycled')
  parser.add_argument('--rollout_demos', type=int, default=None,
                      help='roll out a BC fit on the first K demos only '
                      '(default: the gate\'s first fit, on all of them). A '
                      'weaker rollout policy errs in ways, not just in '
                      'zero-mean noise, as AWAC\'s BC policy fell short of '
                      'its human demos: what advantage weighting can filter')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  cli.require_at_least(parser, args,
                       ('num_demos', 'bc_steps', 'num_eval_episodes'))
  if args.max_demo_episodes is None:
    args.max_demo_episodes = 5 * args.num_demos
  if args.max_demo_episodes < args.num_demos:
    parser.error(f'--max_demo_episodes ({args.max_demo_episodes}) must be at '
                 f'least --num_demos ({args.num_demos})')
  if args.num_bc_episodes < 0 or args.bc_input_noise < 0:
    parser.error('--num_bc_episodes and --bc_input_noise must be >= 0')
  if args.rollout_demos is not None and not (
      1 <= args.rollout_demos <= args.num_demos):
    parser.error(f'--rollout_demos must be in [1, --num_demos '
                 f'{args.num_demos}], got {args.rollout_demos}')
  if not (args.bc_seeds and args.bc_noise_stds):
    parser.error('--bc_seeds and --bc_noise_stds must not be empty')
  if args.policy_workdir and not os.path.isdir(args.policy_workdir):
    parser.error(f'--policy_workdir {args.policy_workdir} is not a folder: '
                 'pass the --workdir of a pen-binary-v0 run_finetune.py run')
  if args.policy_npz and not os.path.isfile(args.policy_npz):
    parser.error(f'--policy_npz {args.policy_npz} is not a file: pass a '
                 'demonstrator_policy.npz or bc_params.npz this script wrote')
  return args


def iql_policy_as_bc(policy_params) -> dict:
  """IQL's deterministic policy tanh(MLP(s)) in `bc.bc_policy`'s format.

  Both are ReLU MLPs with a tanh output, so the layers carry over; IQL does
  not standardise its inputs (mean 0, std 1 here).
  """
  mlp = policy_params['params']['MLP_0']
  params = {}
  for i in range(len(mlp)):
    params[f'w{i}'] = np.asarray(mlp[f'Dense_{i}']['kernel'], np.float32)
    params[f'b{i}'] = np.asarray(mlp[f'Dense_{i}']['bias'], np.float32)
  params['obs_mean'] = np.zeros(params['w0'].shape[0], np.float32)
  params['obs_std'] = np.ones(params['w0'].shape[0], np.float32)
  return params


def checkpoint_policy(workdir: str):
  """(The run's last policy in BC's format, its learner step)."""
  params, steps = program.load_checkpoint_policy(workdir)
  return iql_policy_as_bc(params), steps


def collect_demos(env, policy, args):
  """Demonstrator episodes from seeds --seed + i until --num_demos succeed."""
  demos, rows = [], []
  bar = tqdm(total=args.num_demos, desc='demos', unit='demo', file=sys.stdout,
             dynamic_ncols=True)
  for index in range(args.max_demo_episodes):
    episode = pen.run_policy_episode(env, args.seed + index, policy)
    success = envs.episode_success(pen.ENV_NAME, episode['goal_achieved'])
    rows.append({'index': index, 'target_angle': episode['target_angle'],
                 'held': int(episode['goal_achieved'].sum()),
                 'success': int(success)})
    if success:
      demos.append(episode)
      bar.update()
      if len(demos) == args.num_demos:
        break
  bar.close()
  if len(demos) < args.num_demos:
    raise SystemExit(f'error: the demonstrator succeeded in {len(demos)} of '
                     f'{len(rows)} episodes, short of --num_demos '
                     f'{args.num_demos}; raise --max_demo_episodes or lower '
                     '--num_demos')
  return demos, rows


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.work_dir, exist_ok=True)
  start = time.time()
  if args.policy_npz:
    demonstrator_params = dict(np.load(args.policy_npz))
    learner_steps = None
  else:
    try:
      demonstrator_params, learner_steps = checkpoint_policy(
          args.policy_workdir)
    except ValueError as e:
      raise SystemExit(f'error: {e}') from e
  # Kept beside the data: `--policy_npz` on it rewrites the same files.
  np.savez(os.path.join(args.out, DEMONSTRATOR_FILE), **demonstrator_params)
  demonstrator = bc.bc_policy(demonstrator_params)
  env = envs.make_gymnasium_env(pen.ENV_NAME,
                                seed=args.seed + pen.EVAL_SEED_OFFSET)
  eval_seeds = [args.seed + pen.EVAL_SEED_OFFSET + j
                for j in range(args.num_eval_episodes)]
  demonstrator_gate = pen.evaluate_policy(env, demonstrator, eval_seeds)
  print(f'demonstrator ({args.policy_npz or f"learner step {learner_steps}"}): success '
        f'{demonstrator_gate["success_rate"]:.2f} +- '
        f'{demonstrator_gate["standard_error"]:.2f} over '
        f'{demonstrator_gate["episodes"]} fresh targets', flush=True)

  demos, demo_rows = collect_demos(env, demonstrator, args)
  pen.write_csv(os.path.join(args.work_dir, 'demonstrator_episodes.csv'),
                demo_rows)
  awac_format.save_paths(os.path.join(args.out, pen.DEMO_FILE), [
      awac_format.demo_path(e['observations'][:-1], e['actions'],
                            e['observations'][1:], e['goal_achieved'])
      for e in demos])

  bc_config = dataclasses.replace(bc.BCConfig(), num_steps=args.bc_steps,
                                  input_noise=args.bc_input_noise)
  inputs = np.concatenate([e['observations'][:-1] for e in demos])
  targets = np.concatenate([e['actions'] for e in demos])
  # One BC fit per --bc_seeds entry; the first one is rolled out.
  params, fits, gate, passed = bc.gated_fits(
      inputs, targets, bc_config, args.bc_seeds,
      lambda policy: pen.evaluate_policy(env, policy, eval_seeds), args.gate,
      f'the {len(demos)} demos alone', log_fn=lambda m: print(m, flush=True))
  np.savez(os.path.join(args.work_dir, 'bc_params.npz'), **params)

  bc_paths, bc_rows, bc_actions = [], [], []
  rollout_params, rollout_policy = params, {'demos': len(demos),
                                            **fits[0]}
  if passed and args.num_bc_episodes:
    if args.rollout_demos is not None and args.rollout_demos < len(demos):
      # The first K demos' transitions lead `inputs` and `targets`.
      size = sum(len(e['actions']) for e in demos[:args.rollout_demos])
      rollout_params = bc.fit_bc(inputs[:size], targets[:size], bc_config,
                                 seed=args.bc_seeds[0], log_fn=lambda _: None)
      np.savez(os.path.join(args.work_dir, 'bc_rollout_params.npz'),
               **rollout_params)
      rollout_policy = {'demos': args.rollout_demos,
                        'bc_seed': args.bc_seeds[0],
                        **pen.evaluate_policy(
                            env, bc.bc_policy(rollout_params), eval_seeds)}
      print(f'rollout policy: BC on the first {args.rollout_demos} demos, '
            f'success {rollout_policy["success_rate"]:.2f} +- '
            f'{rollout_policy["standard_error"]:.2f} over '
            f'{rollout_policy["episodes"]} fresh targets', flush=True)
    bc_paths, bc_rows, bc_actions = pen.rollout_bc(
        env, bc.bc_policy(rollout_params), args.num_bc_episodes,
        args.bc_noise_stds, args.seed)
    awac_format.save_paths(os.path.join(args.out, pen.BC_FILE), bc_paths)
    pen.write_csv(os.path.join(args.work_dir, 'bc_episodes.csv'), bc_rows)
  else:
    if not passed:
      print(f'BC success {gate["success_rate"]:.2f} is below the gate '
            f'{args.gate}: no BC rollouts written')
    stale = os.path.join(args.out, pen.BC_FILE)
    if os.path.exists(stale):  # From an earlier run: not these demos' BC.
      os.remove(stale)
      print(f'removed {stale} of an earlier run')
  plot_file = os.path.join(args.work_dir, 'demonstrator_by_angle.png')
  pen.plot_by_angle(plot_file, demo_rows, bc_rows)

  demo_success = [r['success'] for r in demo_rows]
  meta = {
      **pen.meta_header('make_pen_rl_demos.py', argv, args.seed),
      'demonstrator': {
          'kind': 'deterministic MLP policy (IQL policy mean or BC)',
          'policy_workdir': args.policy_workdir,
          'policy_npz': args.policy_npz,
          'file': DEMONSTRATOR_FILE,
          'learner_steps': learner_steps,
          'on_gate_targets': demonstrator_gate,
          'episodes': len(demo_rows),
          'successes': int(np.sum(demo_success)),
          'success_rate': float(np.mean(demo_success)),
          'success_by_target_angle': [
              {'degrees': label, 'episodes': n, 'success_rate': rate}
              for label, n, rate in pen.by_angle(
                  [r['target_angle'] for r in demo_rows], demo_success)]},
      'num_demos': len(demos),
      'demo_transitions': int(sum(len(e['actions']) for e in demos)),
      'demo_smoothness': pen.action_smoothness([e['actions'] for e in demos]),
      'bc': dataclasses.asdict(bc_config),
      'bc_gate': {
          'rule': f'noise-free BC (fitted on the demos alone) success, '
                  f'mean over BC seeds {args.bc_seeds}, >= {args.gate} over '
                  f'{args.num_eval_episodes} fresh targets (success: goal '
                  'held > 20 of 100 steps); rollouts from the first fit',
          'bc_on_demos_alone': gate,
          'each_fit': fits,
          'passed': bool(passed),
          'meets_acceptance': bool(gate['success_rate'] >=
                                   pen.ACCEPTANCE_SUCCESS_RATE),
          'acceptance_rule': f'BC success >= {pen.ACCEPTANCE_SUCCESS_RATE} '
                             f'over {args.num_eval_episodes} fresh targets '
                             '(issue #7 asks for 50)'},
      'rollout_policy': rollout_policy if bc_paths else None,
      **pen.rollout_meta(args.out, bc_paths, bc_rows, bc_actions,
                         args.bc_noise_stds),
      'wall_seconds': round(time.time() - start, 1),
  }
  with open(os.path.join(args.out, pen.META_FILE), 'w') as f:
    json.dump(meta, f, indent=2)
  written = [pen.DEMO_FILE] + ([pen.BC_FILE] if bc_paths else []) + [
      pen.META_FILE]
  print(f'wrote {", ".join(written)} to {args.out} and {plot_file} '
        f'({meta["wall_seconds"]} s)')


if __name__ == '__main__':
  main()
