"""Writes a tiny dataset in the official MiniOneRec layout (for tests and examples)."""

from __future__ import annotations

import csv
import json
import os

from minirec_jax.data import synthetic


def write_official_layout(root: str, category: str = 'Toy', *, num_items: int = 6,
                          rows: dict[str, list[tuple[str, list[int], int]]] | None = None,
                          with_sids: bool = True, with_info: bool = True,
                          splits=('train', 'valid', 'test')) -> str:
  """Writes `root/{split}/{category}_5_2016-10-2018-11.csv`, index/ and info/ files.

  Rows are (user_id, history item ids, target item id). Item i is titled 'Item i' and, with
  `with_sids`, gets SID '<a_{i%3}><b_{i}><c_0>'. Returns the root.
  """
  if rows is None:
    rows = {
        'train': [('A1', [0], 1), ('A2', [2, 3], 4), ('A1', [0, 1], 2)],
        'valid': [('A3', [1, 2, 3], 5)],
        'test': [('A2', [2, 3, 4], 0), ('A4', [5], 3)],
    }
  sid = lambda i: f'<a_{i % 3}><b_{i}><c_0>'
  title = lambda i: f'Item {i}'
  os.makedirs(os.path.join(root, 'index'), exist_ok=True)
  items = {str(i): {'title': title(i), 'description': f"['About item {i}']", 'brand': 'B',
                    'categories': ''} for i in range(num_items)}
  with open(os.path.join(root, 'index', f'{category}.item.json'), 'w') as f:
    json.dump(items, f)
  if with_sids:
    with open(os.path.join(root, 'index', f'{category}.index.json'), 'w') as f:
      json.dump({str(i): [sid(i)[:sid(i).index('>') + 1], f'<b_{i}>', '<c_0>']
                 for i in range(num_items)}, f)
  if with_info:
    os.makedirs(os.path.join(root, 'info'), exist_ok=True)
    with open(os.path.join(root, 'info', f'{category}_5_2016-10-2018-11.txt'), 'w') as f:
      for i in range(num_items):
        f.write(f'{sid(i) if with_sids else ""}\t{title(i)}\t{i}\n')
  header = ['user_id', 'history_item_title', 'item_title', 'history_item_id', 'item_id',
            'history_item_sid', 'item_sid']
  for split in splits:
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with open(os.path.join(root, split, f'{category}_5_2016-10-2018-11.csv'), 'w',
              newline='') as f:
      writer = csv.writer(f)
      writer.writerow(header)
      for user, history, target in rows.get(split, []):
        writer.writerow([user, repr([title(i) for i in history]), title(target), repr(history),
                         target, repr([sid(i) for i in history]), sid(target)])
  return root


def write_synthetic_layout(root: str, params, category: str = 'Toy', **kwargs) -> str:
  """`write_official_layout` of the synthetic dataset generated from `params`
  (`data.synthetic.SyntheticParams`); extra keyword arguments go to `write_official_layout`."""
  data = synthetic.generate(params)
  rows = {name: [(s.user_id, s.history, s.target) for s in samples]
          for name, samples in data.splits.items()}
  return write_official_layout(root, category, num_items=params.num_items, rows=rows, **kwargs)
