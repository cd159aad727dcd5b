"""Serving under load: experiments/serve.py against concurrent clients, beside the offline rate.

  python experiments/bench_serve.py --workdir workdirs/sft_ind_S_ours_s0 \
      [--concurrency=1,8,32] [--requests=1000,4000,6000] [--output=docs/bench/serve.json]
  python experiments/bench_serve.py --random_init ...    (model S, random params, Industrial)

In this process: the offline rate (`Recommender.recommend`, i.e. `recommend.Model.recommend`,
on batches of --offline_batch test users) and the in-process batch-1 latency (p50/p99). Then the
server runs as a subprocess on a free 127.0.0.1 port (its own interpreter: no GIL shared with
the clients, and its resident memory is its own) and, for each concurrency level in turn, that
many aiohttp clients send single-history requests ({"history": [...]}) drawn in order from the
test split: throughput (users/s), p50/p99 latency, failed requests, and the server's resident
memory (VmRSS) when the count of requests over all levels reaches each of --rss_at. Each level
stops after its request count or --phase_timeout_s. The issue's targets come out as ratios:
concurrency 32 throughput >= 0.5 x offline rate with p99 <= 0.5 s; concurrency 1 p50 <= 2 x the
in-process batch-1 p50. Traffic goes to 127.0.0.1 only.
"""

import os

# Two JAX processes (this one and the server) share one accelerator: neither may take most of
# its memory up front, as JAX does by default. Set before JAX is imported.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import asyncio  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from minirec_jax.data import loading  # noqa: E402
from minirec_jax.data import pipeline  # noqa: E402
from minirec_jax.infra import host_memory  # noqa: E402
from minirec_jax.infra import io_utils  # noqa: E402
from minirec_jax.infra import timing  # noqa: E402
from minirec_jax.infra.config_utils import load_config  # noqa: E402
from minirec_jax.loops import artifacts  # noqa: E402
from minirec_jax.serving import recommend  # noqa: E402
from minirec_jax.serving import server  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (SFT, GRPO, train_sasrec).')
_RANDOM = flags.DEFINE_bool('random_init', False, 'Model S on Industrial, random parameters.')
_RANDOM_CONFIG = flags.DEFINE_string('random_config', 'configs/sft.py:dataset=industrial',
                                     'The SFT config of --random_init.')
_TOP_K = flags.DEFINE_integer('top_k', 10, 'Items per user (the beam), offline and served.')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 64, 'Server: histories per model call.')
_MAX_WAIT = flags.DEFINE_float('max_wait_ms', 0.0, 'Server: longest wait for a batch.')
_CONCURRENCY = flags.DEFINE_list('concurrency', ['1', '8', '32'], 'Clients, one level a phase.')
_REQUESTS = flags.DEFINE_list('requests', ['1000', '4000', '6000'],
                              'Requests per concurrency level (the defaults total 11,000).')
_PHASE_TIMEOUT = flags.DEFINE_float('phase_timeout_s', 600.0, 'Time limit of each level.')
_RSS_AT = flags.DEFINE_list('rss_at', ['1000', '10000'],
                            "Request counts at which to read the server's resident memory.")
_OFFLINE_BATCH = flags.DEFINE_integer('offline_batch', 256, 'Users per offline call.')
_OFFLINE_USERS = flags.DEFINE_integer('offline_users', 0, 'Test users timed offline (0: all).')
_SINGLE = flags.DEFINE_integer('single_calls', 200, 'In-process batch-1 calls timed.')
_STARTUP_TIMEOUT = flags.DEFINE_float('startup_timeout_s', 1800.0,
                                      'Longest wait for the server (it compiles every batch '
                                      'size before it listens).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')

HOST = '127.0.0.1'


def _percentiles_ms(seconds: list[float]) -> dict:
  if not seconds:
    return {'p50_ms': None, 'p99_ms': None}
  return {'p50_ms': 1e3 * float(np.percentile(seconds, 50)),
          'p99_ms': 1e3 * float(np.percentile(seconds, 99))}


def _dataset_config(workdir: str):
  """The data config behind a workdir (a GRPO workdir's comes from the SFT it started from)."""
  config = artifacts.workdir_config(workdir)
  while 'grpo' in config:
    config = artifacts.workdir_config(config.init_from)
  return config.data


def _test_batches(data_config, max_history: int, batch: int) -> tuple[list[dict], int]:
  """Padded test batches (the last one filled with copies, `valid` False) and the user count."""
  test = loading.load(data_config).split('test')
  spec = pipeline.BatchSpec(batch, max_history=max_history, drop_remainder=False)
  return list(pipeline.batched(test, spec)), len(test)


def _offline(model: recommend.Model, batches: list[dict], users: int) -> dict:
  """Users per second of `model.recommend` over the batches (one warm-up call first)."""
  model.recommend(batches[0]['history'], batches[0]['history_len'], _TOP_K.value)
  start = time.perf_counter()
  for b in batches:
    model.recommend(b['history'], b['history_len'], _TOP_K.value)
  seconds = time.perf_counter() - start
  return {'batch': _OFFLINE_BATCH.value, 'users': users, 'seconds': seconds,
          'users_per_s': users / seconds}


def _batch1(model: recommend.Model, histories: list[list[int]]) -> dict:
  """Latency of single-history `model.recommend` calls (one warm-up call first)."""
  def call(items):
    h = np.full((1, model.max_history), recommend.PAD, np.int32)
    h[0, :len(items)] = items
    model.recommend(h, np.asarray([len(items)], np.int32), _TOP_K.value)

  call(histories[0])
  seconds = []
  for i in range(_SINGLE.value):
    start = time.perf_counter()
    call(histories[i % len(histories)])
    seconds.append(time.perf_counter() - start)
  return {'calls': len(seconds), **_percentiles_ms(seconds)}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind((HOST, 0))
    return s.getsockname()[1]


def _rss_mb(pid: int) -> float | None:
  """Resident memory of a process (VmRSS of /proc/<pid>/status), None where unreadable."""
  try:
    with open(f'/proc/{pid}/status', encoding='utf-8') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def _start_server(port: int) -> subprocess.Popen:
  command = [sys.executable, os.path.join(os.path.dirname(__file__), 'serve.py'),
             f'--host={HOST}', f'--port={port}', f'--top_k={_TOP_K.value}',
             f'--max_batch={_MAX_BATCH.value}', f'--max_wait_ms={_MAX_WAIT.value}']
  if _RANDOM.value:
    command += ['--random_init', f'--random_config={_RANDOM_CONFIG.value}']
  else:
    command += [f'--workdir={_WORKDIR.value}']
  logging.info('starting %s', ' '.join(command))
  return subprocess.Popen(command)


async def _wait_ready(session: aiohttp.ClientSession, url: str, process: subprocess.Popen):
  deadline = time.monotonic() + _STARTUP_TIMEOUT.value
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'the server exited with status {process.returncode} before serving')
    try:
      async with session.get(f'{url}/healthz') as response:
        if response.status == 200:
          return await response.json()
    except aiohttp.ClientError:
      pass
    await asyncio.sleep(1.0)
  raise RuntimeError(f'the server did not answer within {_STARTUP_TIMEOUT.value} s')


async def _phase(session, url: str, histories: list[list[int]], first: int, concurrency: int,
                 requests: int, counter: dict, rss: dict, pid: int) -> dict:
  """`concurrency` clients sending `requests` single-history requests (or until the timeout)."""
  latencies, errors = [], []
  state = {'next': 0, 'failed': 0}
  deadline = time.monotonic() + _PHASE_TIMEOUT.value
  rss_at = sorted(int(n) for n in _RSS_AT.value)

  async def client():
    while state['next'] < requests and time.monotonic() < deadline:
      i = state['next']
      state['next'] += 1
      body = {'history': histories[(first + i) % len(histories)], 'top_k': _TOP_K.value}
      start = time.perf_counter()
      try:
        async with session.post(f'{url}/recommend', json=body) as response:
          answer = await response.json(content_type=None)
          ok = response.status == 200 and len(answer.get('results', ())) == 1
          problem = None if ok else f'{response.status}: {answer.get("error")}'
      except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        ok, problem = False, f'{type(exc).__name__}: {exc}'
      if ok:
        latencies.append(time.perf_counter() - start)
      else:
        state['failed'] += 1
        if len(errors) < 5:
          errors.append(problem)
      counter['requests'] += 1
      if counter['requests'] in rss_at:
        rss[str(counter['requests'])] = _rss_mb(pid)

  start = time.perf_counter()
  await asyncio.gather(*[client() for _ in range(concurrency)])
  seconds = time.perf_counter() - start
  return {'concurrency': concurrency, 'requests': state['next'], 'failed': state['failed'],
          'seconds': seconds, 'users_per_s': len(latencies) / seconds,
          **_percentiles_ms(latencies), 'first_errors': errors}


async def _load(process: subprocess.Popen, port: int, histories: list[list[int]]) -> dict:
  url = f'http://{HOST}:{port}'
  levels = [int(c) for c in _CONCURRENCY.value]
  counts = [int(n) for n in _REQUESTS.value]
  if len(counts) != len(levels):
    raise app.UsageError('--requests needs one count per --concurrency level')
  timeout = aiohttp.ClientTimeout(total=120)
  # One connection per client; a new session per level keeps connections from carrying over.
  async with aiohttp.ClientSession(timeout=timeout) as session:
    health = await _wait_ready(session, url, process)
  rss = {'ready': _rss_mb(process.pid)}
  counter, phases, first = {'requests': 0}, [], 0
  for concurrency, requests in zip(levels, counts):
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
      phases.append(await _phase(session, url, histories, first, concurrency, requests,
                                 counter, rss, process.pid))
    first += requests
    logging.info('concurrency %d: %s', concurrency, phases[-1])
  rss['end'] = _rss_mb(process.pid)
  async with aiohttp.ClientSession(timeout=timeout) as session:
    async with session.get(f'{url}/healthz') as response:
      batches = await response.json()
  stats = {k: batches[k] for k in ('calls', 'rows', 'padded_rows', 'failed_calls', 'model_s')}
  stats['mean_rows_per_call'] = stats['rows'] / max(stats['calls'], 1)
  return {'server': {key: health[key] for key in ('model', 'top_k', 'max_batch', 'max_wait_ms',
                                                  'batch_sizes')},
          'phases': phases, 'server_rss_mb': rss, 'server_batches': stats}


def _stop(process: subprocess.Popen) -> None:
  """SIGINT (aiohttp's graceful shutdown), then SIGKILL after 30 s."""
  if process.poll() is None:
    process.send_signal(signal.SIGINT)
    try:
      process.wait(30)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def _targets(result: dict) -> dict:
  """The issue's targets as ratios, for the levels this run measured."""
  by_level = {p['concurrency']: p for p in result['phases']}
  targets = {}
  if 32 in by_level and by_level[32]['p99_ms'] is not None:
    ratio = by_level[32]['users_per_s'] / result['offline']['users_per_s']
    targets['c32_throughput_over_offline'] = ratio
    targets['c32_p99_s'] = by_level[32]['p99_ms'] / 1e3
    targets['c32_met'] = ratio >= 0.5 and targets['c32_p99_s'] <= 0.5
  if 1 in by_level and by_level[1]['p50_ms'] is not None:
    ratio = by_level[1]['p50_ms'] / result['batch1']['p50_ms']
    targets['c1_p50_over_batch1_p50'] = ratio
    targets['c1_met'] = ratio <= 2.0
  return targets


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  if _RANDOM.value == bool(_WORKDIR.value):
    raise app.UsageError('give exactly one of --workdir or --random_init')
  config = load_config(_RANDOM_CONFIG.value) if _RANDOM.value else None
  model = server.load_model(_WORKDIR.value or None, config)
  data_config = config.data if config else _dataset_config(_WORKDIR.value)
  batches, users = _test_batches(data_config, model.max_history, _OFFLINE_BATCH.value)
  if _OFFLINE_USERS.value:
    batches = batches[:-(-_OFFLINE_USERS.value // _OFFLINE_BATCH.value)]
    users = min(users, len(batches) * _OFFLINE_BATCH.value)
  histories = [b['history'][r, :b['history_len'][r]].tolist()
               for b in batches for r in np.flatnonzero(b['valid'])]
  result = {**timing.machine_record(), 'model': model.kind, 'top_k': _TOP_K.value,
            'workdir': _WORKDIR.value, 'random_init': _RANDOM.value}
  result['offline'] = _offline(model, batches, users)
  result['batch1'] = _batch1(model, histories)
  logging.info('offline %s, batch-1 %s', result['offline'], result['batch1'])
  port = _free_port()
  process = _start_server(port)
  try:
    result.update(asyncio.run(_load(process, port, histories)))
  finally:
    _stop(process)
  result['targets'] = _targets(result)
  print(json.dumps(result, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
