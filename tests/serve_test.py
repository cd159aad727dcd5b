"""minirec_jax.serving.server: the batcher alone, and the HTTP service on a tiny trained SFT
workdir (served on an ephemeral 127.0.0.1 port by aiohttp's test server)."""

import asyncio
import dataclasses
import json
import os
import threading

from aiohttp import test_utils
import numpy as np
import pytest

from minirec_jax.data import synthetic
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import sft as sft_loop
from minirec_jax.serving import recommend
from minirec_jax.serving import server
from minirec_jax.testing import write_synthetic_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ITEMS = 40
TOP_K = 5


# The batcher with a fake model: row r of a call answers items history[r, :k] + 100 * call.

def _fake(calls):
  def fn(history, lengths, k):
    calls.append((len(lengths), history.copy()))
    items = history[:, :k] + 100 * len(calls)
    return items, -np.arange(k, dtype=np.float32)[None].repeat(len(lengths), 0)
  return fn


def _rows(*histories):
  h = np.full((len(histories), 4), recommend.PAD, np.int32)
  for r, items in enumerate(histories):
    h[r, :len(items)] = items
  return h, np.asarray([len(items) for items in histories], np.int32)


def test_batch_sizes_are_powers_of_two_then_max_batch():
  assert server.batch_sizes(1) == [1]
  assert server.batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
  assert server.batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_batcher_joins_requests_splits_a_large_one_and_pads_to_fixed_sizes():
  calls = []
  batcher = server.Batcher(_fake(calls), max_history=4, top_k=2, max_batch=4, max_wait_ms=1000)
  batcher.start()
  # Submitted before the worker's 1 s wait ends: one call of 3 rows padded to 4.
  a = batcher.submit(*_rows([1, 2]))
  b = batcher.submit(*_rows([3], [4, 5]))
  items_a, _ = a.result(10)
  items_b, scores_b = b.result(10)
  assert [c[0] for c in calls] == [4]
  np.testing.assert_array_equal(items_a, [[101, 102]])
  np.testing.assert_array_equal(items_b[:, 0], [103, 104])
  np.testing.assert_array_equal(scores_b, [[0, -1], [0, -1]])
  # 6 rows with max_batch 4: calls of 4 and 2, rows back in order.
  c = batcher.submit(*_rows(*[[i] for i in range(10, 16)]))
  np.testing.assert_array_equal(c.result(10)[0][:, 0], [210, 211, 212, 213, 314, 315])
  assert [c[0] for c in calls] == [4, 4, 2]
  assert batcher.stats['calls'] == 3 and batcher.stats['rows'] == 9
  batcher.close()
  with pytest.raises(server.Closed):
    batcher.submit(*_rows([1]))


def test_batcher_fails_only_the_batch_whose_model_call_raises_and_bounds_its_queue():
  entered, release = threading.Event(), threading.Event()

  def fn(history, lengths, k):
    entered.set()
    release.wait(10)
    if (history == 7).any():
      raise RuntimeError('boom')
    return history[:, :k], np.zeros((len(lengths), k), np.float32)

  batcher = server.Batcher(fn, max_history=4, top_k=1, max_batch=2, max_wait_ms=0,
                           max_pending=3)
  batcher.start()
  bad = batcher.submit(*_rows([7]))
  assert entered.wait(10)  # the worker holds [7] alone
  waiting = batcher.submit(*_rows([1], [2]))
  with pytest.raises(server.Overloaded, match='server busy'):
    batcher.submit(*_rows([3]))  # 1 + 2 + 1 > 3 waiting
  release.set()
  with pytest.raises(server.ModelError, match='RuntimeError: boom'):
    bad.result(10)
  np.testing.assert_array_equal(waiting.result(10)[0], [[1], [2]])
  assert batcher.submit(*_rows([4])).result(10)[0].tolist() == [[4]]
  assert batcher.stats['failed_calls'] == 1 and batcher.pending == 0
  batcher.close()


@pytest.mark.parametrize('payload, status, problem', [
    ([1, 2], 400, 'must be a JSON object, got an array'),
    ({'histories': [[1]], 'user': 'a'}, 400, "unknown field 'user'"),
    ({}, 400, 'exactly one of "histories"'),
    ({'history': [1], 'histories': [[1]]}, 400, 'exactly one of "histories"'),
    ({'histories': 'x'}, 400, '"histories" must be a list of histories'),
    ({'histories': []}, 400, '"histories" is empty'),
    ({'histories': [[1]] * 3}, 413, 'too many histories: 3 (at most 2 per request)'),
    ({'histories': [[1], [2, 99]]}, 400, 'histories[1]: item id 99 is not in the catalogue'),
    ({'histories': [[1], []]}, 400, 'histories[1]: empty history'),
    ({'history': [1, 2.5]}, 400, 'history: not a list of item ids'),
    ({'history': [1, True]}, 400, 'history: not a list of item ids'),
    ({'history': [-1]}, 400, 'history: item id -1 is not in the catalogue'),
    ({'history': [1], 'top_k': 0}, 400, '"top_k" must be an integer from 1 to 5, got 0'),
    ({'history': [1], 'top_k': '3'}, 400, '"top_k" must be an integer from 1 to 5, got "3"'),
])
def test_parse_request_names_the_problem(payload, status, problem):
  with pytest.raises(server.RequestError) as info:
    server.parse_request(payload, num_items=NUM_ITEMS, max_history=4, max_histories=2,
                         max_top_k=5)
  assert info.value.status == status and problem in str(info.value)


def test_parse_request_keeps_the_newest_items():
  history, lengths, k = server.parse_request({'history': list(range(10))}, num_items=NUM_ITEMS,
                                             max_history=4, max_histories=2, max_top_k=5)
  assert history.tolist() == [[6, 7, 8, 9]] and lengths.tolist() == [4] and k == 5


# The service on a tiny trained SFT workdir.

@pytest.fixture(scope='module')
def model(tmp_path_factory):
  root = tmp_path_factory.mktemp('serve')
  write_synthetic_layout(str(root / 'data'), synthetic.SyntheticParams(
      num_items=NUM_ITEMS, num_clusters=4, num_users=50, seed=1))
  config = load_config(os.path.join(REPO, 'configs', 'sft.py') + ':dataset=industrial,tiny')
  config.data.category = 'Toy'
  config.data.manual_dir = str(root / 'data')
  config.data.data_dir = str(root / 'tfds')
  config.mesh.num_devices = 1
  sft_loop.train_and_evaluate(config, str(root / 'sft'))
  return recommend.load(str(root / 'sft'))


def _counting(model):
  """`model` whose recommend calls are recorded (batch size each)."""
  calls = []

  def fn(history, lengths, k):
    calls.append(len(lengths))
    if (history == 7).any():
      raise RuntimeError('the model failed on purpose')
    return model.recommend(history, lengths, k)

  return dataclasses.replace(model, recommend=fn), calls


def _serve(model, check, **options):
  """Runs `await check(client)` against `model` served on an ephemeral port."""
  app = server.make_app(model, server.ServerOptions(top_k=TOP_K, **options))

  async def run():
    async with test_utils.TestClient(test_utils.TestServer(app, host='127.0.0.1')) as client:
      return await check(client)

  return asyncio.run(run())


def _reference(model, history, k=TOP_K):
  """`Recommender.recommend` on one history (batch 1), as the rows the service returns."""
  h = np.full((1, model.max_history), recommend.PAD, np.int32)
  h[0, :len(history)] = history
  items, scores = model.recommend(h, np.asarray([len(history)], np.int32), k)
  return server.result_rows(model.titles, items, scores, k)[0]


def test_a_request_gets_top_k_items_titles_and_the_recommenders_scores(model):
  async def check(client):
    one = await client.post('/recommend', json={'history': [1, 2, 3]})
    two = await client.post('/recommend', json={'histories': [[1, 2, 3], [5]], 'top_k': 3})
    assert one.status == 200 and two.status == 200
    return await one.json(), await two.json()

  one, two = _serve(model, check, max_batch=2)
  row = one['results'][0]
  assert row == _reference(model, [1, 2, 3])
  assert len(row['items']) == TOP_K and len(set(row['items'])) == TOP_K
  assert row['titles'] == [model.titles[i] for i in row['items']]
  assert row['scores'] == sorted(row['scores'], reverse=True)
  # A smaller top_k is the head of the server's beam-TOP_K ranking.
  assert len(two['results']) == 2
  for result, history in zip(two['results'], [[1, 2, 3], [5]]):
    expected = _reference(model, history)
    assert result['items'] == expected['items'][:3]
    np.testing.assert_allclose(result['scores'], expected['scores'][:3], rtol=1e-5)


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(model):
  counted, calls = _counting(model)
  histories = [[1, 2], [3], [4, 5, 6], [8]]

  async def check(client):
    del calls[:]  # the warm-up calls
    responses = await asyncio.gather(*[client.post('/recommend', json={'history': h})
                                       for h in histories])
    return [await r.json() for r in responses]

  # The 4 requests fill max_batch 4 well before the 5 s wait ends.
  answers = _serve(counted, check, max_batch=4, max_wait_ms=5000)
  assert len(calls) < len(histories) and sum(calls) >= len(histories)
  for answer, history in zip(answers, histories):
    expected = _reference(model, history)
    assert answer['results'][0]['items'] == expected['items']
    np.testing.assert_allclose(answer['results'][0]['scores'], expected['scores'], rtol=1e-5)


BAD = [
    (b'{"history": [1, 2', 400, 'invalid JSON'),
    (b'\xff\xfe{', 400, 'invalid JSON'),
    (b'[' * 5000, 400, 'invalid JSON: maximum recursion depth exceeded'),
    (b'[]', 400, 'must be a JSON object'),
    (b'{"histories": [[1], "2"]}', 400, 'histories[1]: not a list of item ids'),
    (b'{"history": [1, 4000]}', 400, f'item id 4000 is not in the catalogue (0..{NUM_ITEMS - 1})'),
    (b'{"history": []}', 400, 'history: empty history'),
    (b'{"history": [1], "top_k": 6}', 400, '"top_k" must be an integer from 1 to 5'),
    (json.dumps({'histories': [[1]] * 9}).encode(), 413, 'too many histories: 9'),
    (b'{"history": [' + b'1, ' * 4000 + b'1]}', 413, 'request body too long'),
    (b'{"history": [7]}', 500, 'model failure: RuntimeError: the model failed on purpose'),
]


def test_every_bad_request_gets_a_json_error_and_the_next_one_is_served(model):
  counted, _ = _counting(model)

  async def check(client):
    seen = []
    for body, status, problem in BAD:
      response = await client.post('/recommend', data=body)
      seen.append((response.status, (await response.json())['error']))
      good = await client.post('/recommend', json={'history': [1, 2]})
      assert good.status == 200, await good.text()
      assert len((await good.json())['results'][0]['items']) == TOP_K
    for method, path, status in [('GET', '/recommend', 405), ('GET', '/nope', 404)]:
      response = await client.request(method, path)
      seen.append((response.status, (await response.json())['error']))
    return seen

  seen = _serve(counted, check, max_batch=2, max_histories=8, max_body_bytes=10000)
  expected = [(s, p) for _, s, p in BAD] + [(405, 'not allowed'), (404, 'no such endpoint')]
  for (status, error), (want_status, problem) in zip(seen, expected):
    assert status == want_status and problem in error, (status, error)


def test_healthz_reports_the_model_and_its_batches(model):
  async def check(client):
    await client.post('/recommend', json={'histories': [[1], [2], [3]]})
    response = await client.get('/healthz')
    return response.status, await response.json()

  status, health = _serve(model, check, max_batch=4)
  assert status == 200 and health['status'] == 'ok'
  assert health['num_items'] == NUM_ITEMS and health['top_k'] == TOP_K
  assert health['batch_sizes'] == [1, 2, 4]
  assert health['calls'] == 1 and health['rows'] == 3 and health['padded_rows'] == 1
