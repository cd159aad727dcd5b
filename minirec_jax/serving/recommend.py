"""Recommendations for new histories from any trained workdir, in batches.

Input files (one user a row):
  .jsonl  {"user_id": "u1", "history": [3, 8, 12]}    (item ids, oldest first)
  .csv    user_id,history                              (history as a list literal "[3, 8, 12]")
An unknown item id, an empty history or a malformed row is a `DataError` naming the file, line,
field and value, or, with `skip_bad_rows`, is skipped and counted (with the first reasons) in
the summary. Histories longer than the model's history window keep their newest items.

Model kinds (`load(workdir)`): SFT and GRPO workdirs decode under the trie (beam of k, each
generated SID standing for its items, `evaluation.item_lists`); SASRec, BPR-MF and most-popular
workdirs (`train_sasrec`) rank every item. Output rows: user_id, items, titles, scores (best
first), written atomically.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
from typing import Callable

import jax
import numpy as np

from minirec_jax.data.errors import DataError, json_lines, require_file
from minirec_jax.infra import io_utils
from minirec_jax.loops import artifacts
from minirec_jax.loops import sasrec as sasrec_loop

PAD = -1
SKIPPED_REASONS_KEPT = 20

# (history int32 [b, H] (PAD after history_len), history_len [b], k) -> (items [b, k], scores)
RecommendFn = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Model:
  """A trained model ready to recommend: its kind, history window, item titles and function."""

  kind: str
  max_history: int
  titles: list[str]
  recommend: RecommendFn


def load(workdir: str) -> Model:
  """The model of an SFT, GRPO or train_sasrec workdir (its reported checkpoint)."""
  config = artifacts.workdir_config(workdir)
  if 'sids' in config or 'grpo' in config:
    policy = artifacts.load_policy(workdir)
    recommender = policy.setup.recommender
    return Model(policy.name, policy.sft_config.data.max_history,
                 list(policy.setup.dataset.items.title),
                 lambda history, lengths, k: recommender.recommend(policy.params, history,
                                                                   lengths, k))
  s = sasrec_loop.setup(config)
  params = artifacts.load_ranker_params(workdir, s.ranker, config)
  top = jax.jit(lambda p, batch, k: jax.lax.top_k(s.ranker.logits(p, batch, None, None), k),
                static_argnums=2)

  def recommend(history, lengths, k):
    batch = {'history': history, 'history_len': lengths,
             'user': np.full(len(lengths), -1, np.int32)}  # new users: no train-user row
    scores, items = top(params, batch, min(k, s.num_items))
    return np.asarray(items, np.int32), np.asarray(scores)

  return Model(config.model.variant, config.data.max_history, list(s.dataset.items.title),
               recommend)


@dataclasses.dataclass
class Histories:
  """Valid input rows: user ids, padded histories int32 `[n, H]` (PAD after history_len),
  lengths `[n]`, and the input line of each."""

  user_ids: list[str]
  history: np.ndarray
  history_len: np.ndarray
  lines: list[int]


def _rows(path: str):
  """(line number, user_id field, history field value or text) of each input row."""
  if path.endswith('.jsonl'):
    for line, row in json_lines(path):
      if not isinstance(row, dict):
        raise DataError('expected a JSON object', path=path, line=line, field='(line)',
                        value=row)
      yield line, row.get('user_id'), row.get('history')
  elif path.endswith('.csv'):
    with open(path, encoding='utf-8', newline='') as f:
      reader = csv.DictReader(f)
      for column in ('user_id', 'history'):
        if column not in (reader.fieldnames or []):
          raise DataError(f'missing column (header has {reader.fieldnames})', path=path, line=1,
                          field=column)
      for row in reader:
        text = row['history'] or ''
        try:
          history = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
          history = text  # not a list: `_history` names it
        yield reader.line_num, row['user_id'], history
  else:
    raise DataError('input must be a .jsonl or .csv file', path=path)


def parse_history(value, num_items: int) -> list[int]:
  """The item ids of one row's history field; ValueError saying what is wrong."""
  if not isinstance(value, list) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise ValueError('not a list of item ids')
  if not value:
    raise ValueError('empty history')
  unknown = [v for v in value if not 0 <= v < num_items]
  if unknown:
    raise ValueError(f'item id {unknown[0]} is not in the catalogue (0..{num_items - 1})')
  return list(value)


def read_histories(path: str, num_items: int, max_history: int,
                   skip_bad_rows: bool = False) -> tuple[Histories, dict]:
  """Reads and validates an input file; returns (histories, {'skipped', 'reasons'})."""
  require_file(path, 'input file of histories')
  users, histories, lines, skipped, reasons = [], [], [], 0, []
  for line, user_id, value in _rows(path):
    try:
      if not isinstance(user_id, str) or not user_id:
        raise ValueError('missing or empty user_id')
      items = parse_history(value, num_items)
    except ValueError as exc:
      field = 'user_id' if 'user_id' in str(exc) else 'history'
      error = DataError(str(exc), path=path, line=line, field=field,
                        value=user_id if field == 'user_id' else value)
      if not skip_bad_rows:
        raise error from None
      skipped += 1
      if len(reasons) < SKIPPED_REASONS_KEPT:
        reasons.append(str(error))
      continue
    users.append(user_id)
    histories.append(items[-max_history:])
    lines.append(line)
  history, lengths = pad_histories(histories, max_history)
  return Histories(users, history, lengths, lines), {'skipped': skipped, 'reasons': reasons}


def pad_histories(histories: list[list[int]], max_history: int) -> tuple[np.ndarray, np.ndarray]:
  """Item-id lists -> (history int32 `[n, max_history]`, each list's newest `max_history` items
  then PAD; lengths int32 `[n]`)."""
  history = np.full((len(histories), max_history), PAD, np.int32)
  lengths = np.zeros(len(histories), np.int32)
  for row, items in enumerate(histories):
    items = items[-max_history:]
    history[row, :len(items)] = items
    lengths[row] = len(items)
  return history, lengths


def recommend_file(workdir: str, input_path: str, output_path: str, *, top_k: int,
                   batch_size: int = 256, skip_bad_rows: bool = False) -> dict:
  """Top-k items of every valid input row into `output_path` (JSONL); returns a summary."""
  model = load(workdir)
  histories, report = read_histories(input_path, len(model.titles), model.max_history,
                                     skip_bad_rows)
  n = len(histories.user_ids)

  def rows():
    for start in range(0, n, batch_size):
      # Fixed batch shapes: the last batch is padded with its first row (one compilation).
      part = np.arange(start, min(start + batch_size, n))
      padded = np.concatenate([part, np.repeat(part[:1], batch_size - len(part))])
      items, scores = model.recommend(histories.history[padded],
                                      histories.history_len[padded], top_k)
      for r, i in enumerate(part):
        keep = items[r] >= 0
        yield {'user_id': histories.user_ids[i],
               'items': items[r][keep].tolist(),
               'titles': [model.titles[j] for j in items[r][keep]],
               'scores': [float(s) for s in scores[r][keep]]}

  written = io_utils.write_jsonl(output_path, rows())
  return {'model': model.kind, 'input': input_path, 'output': output_path, 'rows': written,
          'top_k': top_k, **report}

