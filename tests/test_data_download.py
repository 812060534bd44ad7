"""D4RL download by name, against a local HTTP server on 127.0.0.1 only."""

import http.server
import io
import os
import socket
import threading

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')

import d4rl.infos  # pylint: disable=g-import-not-at-top
import h5py
import numpy as np
import pytest

from iql_acme.data import (DatasetError, d4rl_dataset_path, download_d4rl,
                           load_dataset)

NAME = 'hopper-medium-v2'
N, OBS_DIM, ACT_DIM = 30, 11, 3


def small_d4rl_file() -> bytes:
  """A small valid D4RL HDF5 file, as bytes."""
  rng = np.random.default_rng(0)
  buffer = io.BytesIO()
  with h5py.File(buffer, 'w') as f:
    f.create_dataset('observations', data=rng.normal(size=(N, OBS_DIM)))
    f.create_dataset('actions', data=rng.uniform(-1, 1, size=(N, ACT_DIM)))
    f.create_dataset('rewards', data=rng.normal(size=N))
    f.create_dataset('terminals', data=np.arange(N) % 11 == 10)
    f.create_dataset('timeouts', data=np.arange(N) % 7 == 6)
  return buffer.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
  """Serves `routes`: path -> (body, bytes actually sent)."""
  routes = {}
  requests = []

  def do_GET(self):  # pylint: disable=invalid-name
    self.requests.append(self.path)
    if self.path not in self.routes:
      self.send_error(404)
      return
    body, sent = self.routes[self.path]
    self.send_response(200)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body[:sent])  # Fewer bytes than promised: a cut-off.
    self.close_connection = True

  def log_message(self, *args):
    del args


@pytest.fixture
def server(monkeypatch):
  monkeypatch.setenv('NO_PROXY', '127.0.0.1')
  monkeypatch.setenv('no_proxy', '127.0.0.1')
  Handler.routes, Handler.requests = {}, []
  httpd = http.server.HTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()
  httpd.server_close()
  thread.join()


def serve(monkeypatch, base_url, body, sent=None,
          file_name='hopper_medium-v2.hdf5'):
  Handler.routes[f'/{file_name}'] = (body, len(body) if sent is None else sent)
  url = f'{base_url}/{file_name}'
  monkeypatch.setitem(d4rl.infos.DATASET_URLS, NAME, url)
  return url


def test_load_dataset_by_name_downloads_once(server, monkeypatch, tmp_path):
  body = small_d4rl_file()
  serve(monkeypatch, server, body)
  monkeypatch.setenv('D4RL_DATASET_DIR', str(tmp_path / 'cache'))
  path = d4rl_dataset_path(NAME)
  assert path == str(tmp_path / 'cache' / 'hopper_medium-v2.hdf5')

  transitions, transform = load_dataset(NAME, domain='locomotion',
                                        obs_dim=OBS_DIM, act_dim=ACT_DIM)
  with open(path, 'rb') as f:
    assert f.read() == body
  assert os.listdir(tmp_path / 'cache') == ['hopper_medium-v2.hdf5']
  assert transform.scale > 0 and transitions.size > 0
  again, _ = load_dataset(NAME, domain='locomotion')
  np.testing.assert_array_equal(again.observations, transitions.observations)
  assert Handler.requests == ['/hopper_medium-v2.hdf5']  # Cached afterwards.


def test_download_into_given_dir(server, monkeypatch, tmp_path):
  serve(monkeypatch, server, small_d4rl_file())
  path = download_d4rl(NAME, dataset_dir=str(tmp_path))
  assert path == str(tmp_path / 'hopper_medium-v2.hdf5')
  with h5py.File(path, 'r') as f:
    assert f['observations'].shape == (N, OBS_DIM)


def expect_download_error(directory, *fragments):
  with pytest.raises(DatasetError) as caught:
    download_d4rl(NAME, dataset_dir=str(directory))
  message = str(caught.value)
  assert message.startswith(f'could not download {NAME} from ')
  assert f'place the file at {directory / "hopper_medium-v2.hdf5"}' in message
  assert message.endswith('or set D4RL_DATASET_DIR')
  for fragment in fragments:
    assert fragment in message, message
  assert os.listdir(directory) == []  # Neither a partial nor a temp file.


def test_truncated_download_errors_and_leaves_no_file(server, monkeypatch,
                                                      tmp_path):
  body = small_d4rl_file()
  serve(monkeypatch, server, body, sent=len(body) // 2)
  expect_download_error(tmp_path,
                        f'received {len(body) // 2} of {len(body)} bytes')


def test_download_that_is_not_hdf5_errors(server, monkeypatch, tmp_path):
  serve(monkeypatch, server, b'<html>moved</html>')
  expect_download_error(tmp_path, 'not a usable D4RL HDF5 file')


def test_http_error(server, monkeypatch, tmp_path):
  monkeypatch.setitem(d4rl.infos.DATASET_URLS, NAME,
                      f'{server}/hopper_medium-v2.hdf5')
  expect_download_error(tmp_path, '404')


def test_offline_errors_clearly(monkeypatch, tmp_path):
  with socket.socket() as probe:  # A port with nothing listening.
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  monkeypatch.setitem(d4rl.infos.DATASET_URLS, NAME,
                      f'http://127.0.0.1:{port}/hopper_medium-v2.hdf5')
  monkeypatch.setenv('D4RL_DATASET_DIR', str(tmp_path))
  with pytest.raises(DatasetError, match='could not download .* refused'):
    load_dataset(NAME, domain='locomotion')
  assert os.listdir(tmp_path) == []
