"""Dataset statistics, computed from the built splits (not from builder bookkeeping)."""

from __future__ import annotations

import numpy as np

from minirec_jax.data.loading import Dataset


def split_statistics(source) -> dict:
  """Row, user and history statistics of one split (a random-access example sequence)."""
  n = len(source)
  examples = source.__getitems__(list(range(n))) if n else []
  lengths = np.array([len(e['history']) for e in examples], dtype=np.int64)
  users = {e['user_id'] for e in examples}
  repeats = sum(int(e['target'] == e['history'][-1]) for e in examples)
  in_history = sum(int(e['target'] in set(e['history'].tolist())) for e in examples)
  return {
      'rows': n,
      'users': len(users),
      'history_len_mean': float(lengths.mean()) if n else 0.0,
      'history_len_max': int(lengths.max()) if n else 0,
      'target_is_last_history_item': repeats,
      'target_in_history': in_history,
      'distinct_targets': len({int(e['target']) for e in examples}),
  }


def dataset_statistics(dataset: Dataset) -> dict:
  return {
      'name': dataset.name,
      'items': dataset.num_items,
      'items_with_official_sid': sum(1 for s in dataset.items.sid if s),
      'splits': {name: split_statistics(src) for name, src in dataset.splits.items()},
      'absent_splits': dict(dataset.absent_splits),
  }


def format_statistics(stats: dict) -> str:
  lines = [f"dataset {stats['name']}: {stats['items']:,} items "
           f"({stats['items_with_official_sid']:,} with an official SID)"]
  header = ('split', 'rows', 'users', 'hist mean', 'hist max', 'target==last', 'target in hist')
  lines.append('| ' + ' | '.join(header) + ' |')
  lines.append('|' + '---|' * len(header))
  for name, s in stats['splits'].items():
    lines.append(f"| {name} | {s['rows']:,} | {s['users']:,} | {s['history_len_mean']:.2f} | "
                 f"{s['history_len_max']} | {s['target_is_last_history_item']:,} | "
                 f"{s['target_in_history']:,} |")
  for name, reason in stats['absent_splits'].items():
    lines.append(f'({name}: {reason})')
  return '\n'.join(lines)
