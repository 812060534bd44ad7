"""experiments/cli.py: the list flags the experiment scripts share."""

import argparse
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import cli  # pylint: disable=g-import-not-at-top,wrong-import-position


def parser():
  p = argparse.ArgumentParser(prog='script.py')
  p.add_argument('--seeds', type=cli.int_list, default='0,1,2')
  p.add_argument('--stds', type=cli.float_list, default='')
  return p


def test_lists_parse_and_defaults_go_through_the_type():
  args = parser().parse_args([])
  assert args.seeds == [0, 1, 2] and args.stds == []
  args = parser().parse_args(['--seeds', '4, 5,', '--stds', '0.1,1e-2'])
  assert args.seeds == [4, 5] and args.stds == [0.1, 0.01]


@pytest.mark.parametrize('flags, message', [
    (['--seeds', '0,a'],
     "argument --seeds: must be comma-separated integers, got '0,a'"),
    (['--seeds', '1.5'],
     "argument --seeds: must be comma-separated integers, got '1.5'"),
    (['--stds', '0.1,x'],
     "argument --stds: must be comma-separated numbers, got '0.1,x'"),
])
def test_a_bad_entry_is_one_line_and_exit_2(capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    parser().parse_args(flags)
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error == f'script.py: error: {message}'


def test_boolean_reads_true_false_and_rejects_the_rest(capsys):
  p = argparse.ArgumentParser(prog='script.py')
  p.add_argument('--on', type=cli.boolean, default=None)
  assert p.parse_args([]).on is None
  for text, value in (('true', True), ('False', False), ('1', True),
                      ('0', False)):
    assert p.parse_args(['--on', text]).on is value
  with pytest.raises(SystemExit):
    p.parse_args(['--on', 'maybe'])
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      "script.py: error: argument --on: must be true or false, got 'maybe'")
