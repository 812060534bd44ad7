"""Argparse types the experiment scripts share.

`type=cli.int_list` turns '0,1,2' into [0, 1, 2]; a bad entry is argparse's
one-line error (`argument --seeds: must be comma-separated integers, got
'0,a'`, exit 2). Blank entries are dropped, so '' is []: scripts that need
a non-empty list say so themselves.
"""

import argparse


def _list_of(kind, what: str):
  def parse(text: str) -> list:
    try:
      return [kind(s) for s in text.split(',') if s.strip()]
    except ValueError:
      raise argparse.ArgumentTypeError(
          f'must be comma-separated {what}, got {text!r}') from None
  parse.__name__ = f'{kind.__name__}_list'
  return parse


int_list = _list_of(int, 'integers')
float_list = _list_of(float, 'numbers')

_BOOLEANS = {'true': True, '1': True, 'false': False, '0': False}


def boolean(text: str) -> bool:
  """'true'/'false' (or 1/0, any case), as absl's --flag=true|false."""
  try:
    return _BOOLEANS[text.strip().lower()]
  except KeyError:
    raise argparse.ArgumentTypeError(
        f'must be true or false, got {text!r}') from None


# IQLConfig fields the scripts that train IQL take as flags (None: the
# domain preset's value); launch/run_finetune.py defines the same as absl flags.
IQL_FLAGS = ('expectile', 'temperature', 'online_actor_learning_rate',
             'actor_cosine_decay')


def add_iql_flags(parser: argparse.ArgumentParser, applies_to: str = ''):
  """The `IQL_FLAGS`, each defaulting to None; `applies_to` ends the help."""
  suffix = f', {applies_to}' if applies_to else ''
  parser.add_argument('--expectile', type=float, default=None,
                      help=f"IQL's tau, in (0, 1){suffix} (default: the "
                      "preset's)")
  parser.add_argument('--temperature', type=float, default=None,
                      help=f"IQL's beta, >= 0; 0 is behavioural cloning{suffix}"
                      " (default: the preset's)")
  parser.add_argument('--online_actor_learning_rate', type=float,
                      default=None, help="the actor's rate after the offline "
                      f'phase{suffix} (default: the offline rate)')
  parser.add_argument('--actor_cosine_decay', type=boolean, default=None,
                      help="true/false: decay the actor's rate over the "
                      f'offline phase{suffix} (default: true)')


def require_at_least(parser: argparse.ArgumentParser, args, flags,
                     least: int = 1):
  """argparse's one-line error for the first of `flags` below `least`."""
  for flag in flags:
    if getattr(args, flag) < least:
      parser.error(f'--{flag} must be at least {least}, got '
                   f'{getattr(args, flag)}')
