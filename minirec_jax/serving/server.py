"""An HTTP JSON service over a loaded model (`recommend.load`), with dynamic batching.

  POST /recommend  {"histories": [[item ids, oldest first], ...], "top_k": K}
                   or {"history": [item ids], "top_k": K}      (top_k optional)
    200 {"results": [{"items": [...], "titles": [...], "scores": [...]}, ...]}  (best first, one
        result per history, in request order)
  GET /healthz
    200 {"status": "ok", "model": ..., "calls": ..., ...}; 503 once the batch worker has stopped.

Every error is JSON {"error": "<what is wrong>"}: 400 for malformed JSON, wrong types, unknown
item ids, empty histories or a bad top_k; 413 for too many histories or too long a body; 404 and
405 for other paths and methods; 503 when the queue is full or the server is stopping; 500 when
the model call fails. A bad request never stops the service.

Batching: a single worker thread (`Batcher`) takes the pending histories of all requests, up to
`max_batch` rows: whatever has arrived when it is free (requests pile up while a call runs, so
batches grow with the load) or, with `max_wait_ms` > 0, until the oldest has waited that long.
It runs one model call on them padded to the next of a few fixed batch sizes (powers of two up
to `max_batch`, all compiled at start-up), and resolves each request's future with its own
rows. The model never runs on the
event loop, which only parses, validates and awaits.

The beam is the server's `top_k` (`ServerOptions.top_k`): a request's top_k (at most that) takes
the first top_k items of that ranking, as the evaluation cuts its beam-50 list at 5 and 10, so no
request compiles a new shape.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import queue
import threading
import time
from typing import Any

from absl import logging
from aiohttp import web
import jax
import ml_collections
import numpy as np

from minirec_jax.loops import sft as sft_loop
from minirec_jax.serving import recommend

_STOP = object()  # queue sentinel: the worker finishes the batch in hand and exits


class Overloaded(RuntimeError):
  """The batcher holds `max_pending` histories already (HTTP 503)."""


class Closed(RuntimeError):
  """The batcher has stopped (HTTP 503)."""


class ModelError(RuntimeError):
  """The model call of a batch failed; every request in that batch gets it (HTTP 500)."""


def batch_sizes(max_batch: int) -> list[int]:
  """The padded batch shapes: powers of two below `max_batch`, then `max_batch` itself."""
  if max_batch < 1:
    raise ValueError(f'max_batch must be >= 1, got {max_batch}')
  sizes = [1]
  while sizes[-1] * 2 < max_batch:
    sizes.append(sizes[-1] * 2)
  return sizes + [max_batch] if sizes[-1] != max_batch else sizes


@dataclasses.dataclass(eq=False)
class _Job:
  """One request's histories `[n, H]` and lengths `[n]`, its future and its rows' results."""

  history: np.ndarray
  lengths: np.ndarray
  future: concurrent.futures.Future
  arrival: float
  taken: int = 0  # rows handed to a model call so far
  done: int = 0   # rows with results
  items: list = dataclasses.field(default_factory=list)
  scores: list = dataclasses.field(default_factory=list)

  @property
  def rows(self) -> int:
    return len(self.lengths)


class Batcher:
  """Runs `recommend_fn` on the pending rows of all requests, from one worker thread.

  `submit` (any thread) returns a future of (items `[n, k]`, scores `[n, k]`) for n padded
  histories. The worker collects rows until it has `max_batch` of them or the oldest waiting
  request arrived `max_wait_ms` ago (0, the default: what has arrived when the worker is free;
  a wait for a batch to fill adds that wait to every request at low load, while at high load
  requests queue behind the running call anyway), takes up to `max_batch` rows in arrival
  order (a request larger than that spans several calls), pads them to the next of `sizes`
  with copies of the first row and makes one call. `max_pending` rows may wait at most; more
  is `Overloaded`.
  """

  def __init__(self, recommend_fn: recommend.RecommendFn, *, max_history: int, top_k: int,
               max_batch: int = 64, max_wait_ms: float = 0.0,
               sizes: list[int] | None = None, max_pending: int | None = None):
    self.fn = recommend_fn
    self.max_history = max_history
    self.top_k = top_k
    self.max_batch = max_batch
    self.max_wait = max_wait_ms / 1e3
    self.sizes = sorted(sizes or batch_sizes(max_batch))
    if self.sizes[-1] < max_batch:
      raise ValueError(f'the largest batch size {self.sizes[-1]} is below max_batch {max_batch}')
    self.max_pending = max_pending or 16 * max_batch
    self._queue: queue.SimpleQueue = queue.SimpleQueue()
    self._lock = threading.Lock()
    self._pending = 0
    self._closed = False
    self._thread: threading.Thread | None = None
    self.started = 0.0
    self.stats = {'calls': 0, 'rows': 0, 'padded_rows': 0, 'failed_calls': 0, 'model_s': 0.0}

  def warm_up(self) -> dict[int, float]:
    """Compiles every batch size (a one-item history); returns seconds per size."""
    seconds = {}
    for size in self.sizes:
      history = np.full((size, self.max_history), recommend.PAD, np.int32)
      history[:, 0] = 0
      start = time.perf_counter()
      self.fn(history, np.ones(size, np.int32), self.top_k)
      seconds[size] = time.perf_counter() - start
      logging.info('warmed batch size %d in %.1f s', size, seconds[size])
    return seconds

  def start(self) -> None:
    self.started = time.monotonic()
    self._thread = threading.Thread(target=self._loop, name='minirec-batcher', daemon=True)
    self._thread.start()

  @property
  def alive(self) -> bool:
    return self._thread is not None and self._thread.is_alive() and not self._closed

  @property
  def pending(self) -> int:
    return self._pending

  def submit(self, history: np.ndarray, lengths: np.ndarray) -> concurrent.futures.Future:
    """Queues histories int32 `[n, H]` (PAD after `lengths` `[n]`); thread-safe."""
    n = len(lengths)
    with self._lock:
      if not self.alive:
        raise Closed('the server is stopping')
      if self._pending + n > self.max_pending:
        raise Overloaded(f'server busy: {self._pending} histories are waiting '
                         f'(at most {self.max_pending}); retry later')
      self._pending += n
    job = _Job(history, lengths, concurrent.futures.Future(), time.monotonic())
    self._queue.put(job)
    return job.future

  def close(self, timeout: float = 30.0) -> None:
    """Finishes the batch in hand, fails what still waits with `Closed`, stops the worker."""
    with self._lock:
      self._closed = True
    self._queue.put(_STOP)
    if self._thread is not None:
      self._thread.join(timeout)

  def _finish(self, job: _Job, error: Exception | None = None) -> None:
    with self._lock:
      self._pending -= job.rows
    if job.future.done():
      return
    if error is not None:
      job.future.set_exception(error)
    else:
      job.future.set_result((np.stack(job.items), np.stack(job.scores)))

  def _loop(self) -> None:
    waiting: collections.deque[_Job] = collections.deque()
    stop = False
    while not stop:
      if not waiting:
        job = self._queue.get()
        if job is _STOP:
          break
        waiting.append(job)
      stop = self._collect(waiting)
      try:
        self._run_one(waiting)
      except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker silently
        logging.exception('batch worker error')
        for job in list(waiting):
          self._finish(job, ModelError(f'{type(exc).__name__}: {exc}'))
        waiting.clear()
    while True:  # what arrived after the stop, or waited behind it
      try:
        job = self._queue.get_nowait()
      except queue.Empty:
        break
      if job is not _STOP:
        waiting.append(job)
    for job in waiting:
      self._finish(job, Closed('the server is stopping'))

  def _collect(self, waiting: collections.deque[_Job]) -> bool:
    """Adds arrivals to `waiting` until max_batch rows or the oldest's deadline; True on stop."""
    rows = sum(job.rows - job.taken for job in waiting)
    deadline = waiting[0].arrival + self.max_wait
    while rows < self.max_batch:
      timeout = deadline - time.monotonic()
      try:  # past the deadline still take what has already arrived
        job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if job is _STOP:
        return True
      waiting.append(job)
      rows += job.rows
    return False

  def _run_one(self, waiting: collections.deque[_Job]) -> None:
    """One model call on up to max_batch rows from the front of `waiting`."""
    parts = []  # (job, first row, end row)
    n = 0
    while waiting and n < self.max_batch:
      job = waiting[0]
      # A request whose client went away (future cancelled) is dropped before any work.
      if job.taken == 0 and not job.future.set_running_or_notify_cancel():
        waiting.popleft()
        self._finish(job)
        continue
      take = min(job.rows - job.taken, self.max_batch - n)
      parts.append((job, job.taken, job.taken + take))
      job.taken += take
      n += take
      if job.taken == job.rows:
        waiting.popleft()
    if not parts:
      return
    start = time.perf_counter()
    try:
      items, scores = self._call(parts, n)
    except Exception as exc:  # noqa: BLE001 - reported to the requests, the worker goes on
      logging.exception('model call failed on a batch of %d', n)
      self.stats['failed_calls'] += 1
      error = ModelError(f'{type(exc).__name__}: {exc}')
      for job in {job for job, _, _ in parts}:
        if job in waiting:  # partly taken: its other rows must not run either
          waiting.remove(job)
        self._finish(job, error)
      return
    self.stats['model_s'] += time.perf_counter() - start
    self.stats['calls'] += 1
    self.stats['rows'] += n
    offset = 0
    for job, a, b in parts:
      job.items.extend(items[offset:offset + b - a])
      job.scores.extend(scores[offset:offset + b - a])
      offset += b - a
      job.done += b - a
      if job.done == job.rows:
        self._finish(job)

  def _call(self, parts: list[tuple[_Job, int, int]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The model on the n rows of `parts`, padded to the next batch size: `[size, k]` each."""
    size = next(s for s in self.sizes if s >= n)
    # Padding rows repeat the first row: valid inputs, results dropped.
    history = np.concatenate([job.history[a:b] for job, a, b in parts])
    lengths = np.concatenate([job.lengths[a:b] for job, a, b in parts])
    history = np.concatenate([history, np.repeat(history[:1], size - n, axis=0)])
    lengths = np.concatenate([lengths, np.repeat(lengths[:1], size - n)])
    items, scores = self.fn(history, lengths, self.top_k)
    items, scores = np.asarray(items), np.asarray(scores)
    if items.shape[0] != size or scores.shape != items.shape:
      raise ValueError(f'the model returned items {items.shape} and scores {scores.shape} '
                       f'for a batch of {size}')
    self.stats['padded_rows'] += size - n
    return items, scores


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """Limits and batching of one server."""

  top_k: int = 10                  # beam width, the most items a request may ask for (default)
  max_batch: int = 64              # rows per model call
  max_wait_ms: float = 0.0         # how long the oldest request may wait for others
  batch_sizes: tuple[int, ...] = ()  # padded shapes; () = powers of two up to max_batch
  max_histories: int = 256         # per request (more: 413)
  max_body_bytes: int = 1 << 20    # per request (more: 413)
  max_pending: int = 0             # histories waiting at most (more: 503); 0 = 16 * max_batch
  warm_up: bool = True             # compile every batch size before serving


class RequestError(Exception):
  """A bad request: its HTTP status and a message naming the problem."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _json_type(value: Any) -> str:
  """The JSON name of a decoded value's type, for error messages."""
  names = {dict: 'an object', list: 'an array', str: 'a string', bool: 'a boolean',
           int: 'a number', float: 'a number', type(None): 'null'}
  return names.get(type(value), type(value).__name__)


def parse_request(payload: Any, *, num_items: int, max_history: int, max_histories: int,
                  max_top_k: int) -> tuple[np.ndarray, np.ndarray, int]:
  """A decoded JSON body -> (histories int32 `[n, H]`, PAD after lengths `[n]`, top_k).

  Histories longer than `max_history` keep their newest items (as `recommend.read_histories`).
  Raises RequestError naming the field, index and problem.
  """
  if not isinstance(payload, dict):
    raise RequestError(400, f'the body must be a JSON object, got {_json_type(payload)}')
  unknown = sorted(set(payload) - {'histories', 'history', 'top_k'})
  if unknown:
    raise RequestError(400, f'unknown field {unknown[0]!r} (fields: "histories" or "history", '
                       'and optional "top_k")')
  if ('histories' in payload) == ('history' in payload):
    raise RequestError(400, 'give exactly one of "histories" (a list of histories) or '
                       '"history" (one list of item ids)')
  if 'history' in payload:
    values, names = [payload['history']], ['history']
  else:
    values = payload['histories']
    if not isinstance(values, list):
      raise RequestError(400, '"histories" must be a list of histories (lists of item ids), '
                         f'got {_json_type(values)}')
    if not values:
      raise RequestError(400, '"histories" is empty')
    if len(values) > max_histories:
      raise RequestError(413, f'too many histories: {len(values)} (at most {max_histories} '
                         'per request)')
    names = [f'histories[{i}]' for i in range(len(values))]
  top_k = payload.get('top_k', max_top_k)
  if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= max_top_k:
    raise RequestError(400, f'"top_k" must be an integer from 1 to {max_top_k}, got '
                       f'{json.dumps(top_k)}')
  histories = []
  for name, value in zip(names, values):
    try:  # the file reader's own check, so both paths word errors alike
      histories.append(recommend.parse_history(value, num_items))
    except ValueError as exc:
      raise RequestError(400, f'{name}: {exc}') from None
  history, lengths = recommend.pad_histories(histories, max_history)
  return history, lengths, top_k


def result_rows(titles: list[str], items: np.ndarray, scores: np.ndarray,
                top_k: int) -> list[dict]:
  """Items `[n, >=top_k]` (-1: none) and scores -> one {items, titles, scores} per row."""
  rows = []
  for row_items, row_scores in zip(items[:, :top_k], scores[:, :top_k]):
    keep = row_items >= 0
    rows.append({'items': row_items[keep].tolist(),
                 'titles': [titles[i] for i in row_items[keep]],
                 'scores': [float(s) for s in row_scores[keep]]})
  return rows


BATCHER = web.AppKey('batcher', Batcher)


def _error(status: int, message: str) -> web.Response:
  return web.json_response({'error': message}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
  """aiohttp's own errors (404, 405, 413 on a long body) as JSON; anything unexpected as 500."""
  try:
    return await handler(request)
  except web.HTTPException as exc:
    if exc.status < 400:
      raise
    message = {
        404: f'no such endpoint: {request.method} {request.path} (POST /recommend, GET /healthz)',
        405: f'method {request.method} is not allowed on {request.path}',
        413: f'request body too long: {exc.text}',
    }.get(exc.status, exc.text or exc.reason)
    return _error(exc.status, message)
  except Exception as exc:  # noqa: BLE001 - the service answers and goes on
    logging.exception('unexpected error on %s %s', request.method, request.path)
    return _error(500, f'internal error: {type(exc).__name__}: {exc}')


def make_app(model: recommend.Model, options: ServerOptions = ServerOptions()) -> web.Application:
  """The aiohttp application serving `model`; its batcher warms up and starts with the app
  (`app[BATCHER]`, e.g. for its `stats`) and stops on cleanup."""
  batcher = Batcher(model.recommend, max_history=model.max_history, top_k=options.top_k,
                    max_batch=options.max_batch, max_wait_ms=options.max_wait_ms,
                    sizes=list(options.batch_sizes) or None,
                    # one request of max_histories must always fit
                    max_pending=max(options.max_pending or 16 * options.max_batch,
                                    options.max_histories))
  num_items = len(model.titles)
  app = web.Application(client_max_size=options.max_body_bytes, middlewares=[_json_errors])
  app[BATCHER] = batcher

  async def recommend_handler(request: web.Request) -> web.Response:
    body = await request.read()  # over client_max_size: 413 (the middleware words it)
    try:
      payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also undecodable bytes, too deep nesting
      return _error(400, f'invalid JSON: {exc}')
    try:
      history, lengths, top_k = parse_request(
          payload, num_items=num_items, max_history=model.max_history,
          max_histories=options.max_histories, max_top_k=options.top_k)
      items, scores = await asyncio.wrap_future(batcher.submit(history, lengths))
    except RequestError as exc:
      return _error(exc.status, str(exc))
    except (Overloaded, Closed) as exc:
      return _error(503, str(exc))
    except ModelError as exc:
      return _error(500, f'model failure: {exc}')
    return web.json_response({'results': result_rows(model.titles, items, scores, top_k)})

  async def healthz(request: web.Request) -> web.Response:
    del request
    body = {'status': 'ok' if batcher.alive else 'stopped', 'model': model.kind,
            'num_items': num_items, 'max_history': model.max_history, 'top_k': options.top_k,
            'max_batch': options.max_batch, 'max_wait_ms': options.max_wait_ms,
            'batch_sizes': batcher.sizes, 'pending': batcher.pending,
            'uptime_s': round(time.monotonic() - batcher.started, 3), **batcher.stats}
    return web.json_response(body, status=200 if batcher.alive else 503)

  async def lifecycle(app: web.Application):
    del app
    if options.warm_up:  # blocking, but nothing is served before start-up ends
      await asyncio.get_running_loop().run_in_executor(None, batcher.warm_up)
    batcher.start()
    yield
    await asyncio.get_running_loop().run_in_executor(None, batcher.close)

  app.cleanup_ctx.append(lifecycle)
  app.router.add_post('/recommend', recommend_handler)
  app.router.add_get('/healthz', healthz)
  return app


def serve(model: recommend.Model, options: ServerOptions, *, host: str = '127.0.0.1',
          port: int = 8080, access_log: bool = False) -> None:
  """Serves `model` until SIGINT or SIGTERM (warm-up first: the port opens when ready)."""
  web.run_app(make_app(model, options), host=host, port=port,
              access_log=web.access_logger if access_log else None,
              print=lambda text: logging.info('%s', text))


def random_model(config: ml_collections.ConfigDict, seed: int = 0) -> recommend.Model:
  """The SFT model of `config` with random parameters (load tests without a trained workdir:
  it decodes at the trained model's speed)."""
  s = sft_loop.setup(config)
  params = sft_loop.init_state(s, config, 1, jax.random.key(seed)).params
  return recommend.Model(f'{config.model.variant} (random init)', config.data.max_history,
                         list(s.dataset.items.title),
                         lambda history, lengths, k: s.recommender.recommend(params, history,
                                                                             lengths, k))


def load_model(workdir: str | None, random_config: ml_collections.ConfigDict | None
               ) -> recommend.Model:
  """The model a binary serves: a trained workdir's, or `random_model(random_config)`; exactly
  one of the two must be given."""
  if (workdir is None) == (random_config is None):
    raise ValueError('give exactly one of a workdir or a random-init config')
  return recommend.load(workdir) if workdir else random_model(random_config)
