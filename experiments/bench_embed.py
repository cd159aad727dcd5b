"""Item-embedding benchmark: all-MiniLM-L6-v2 in JAX over the Industrial catalogue.

  python experiments/bench_embed.py [--limit 64] [--batch_size 256] [--output docs/bench/embed.json]

Reads the item texts from `<root>/index/<category>.item.json` (official text rule), loads the
encoder (timed), then embeds every item `--repeats` times with `embed_texts`: the first pass
includes XLA compilation of the length buckets, later passes show the steady rate. No disk
cache is involved.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np

from minirec_jax.data.official import reader
from minirec_jax.infra import config_utils
from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.semantic_ids import embeddings
from minirec_jax.semantic_ids import item_text
from minirec_jax.semantic_ids import text_encoder

_ROOT = flags.DEFINE_string('root', config_utils.OFFICIAL_ROOT, 'Official data folder.')
_CATEGORY = flags.DEFINE_string('category', 'Industrial_and_Scientific', 'Dataset category.')
_LIMIT = flags.DEFINE_integer('limit', None, 'Embed only the first N items (smoke runs).')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Rows per encoder call.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Passes over the items (the first compiles).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  texts = item_text.item_texts(reader.read_item_table(_ROOT.value, _CATEGORY.value))
  texts = texts[:_LIMIT.value] if _LIMIT.value else texts
  start = time.perf_counter()
  encoder = text_encoder.TextEncoder.load()
  load_s = time.perf_counter() - start
  tokens = [len(t) for t in encoder.tokenize(texts)]
  results = {
      **timing.machine_record(),
      'category': _CATEGORY.value, 'items': len(texts), 'batch_size': _BATCH.value,
      'tokens_mean': round(float(np.mean(tokens)), 1), 'tokens_max': int(max(tokens)),
      'truncated_items': int(sum(n >= encoder.config.max_seq_length for n in tokens)),
      'load_s': round(load_s, 2), 'passes': [],
  }
  print(f'{len(texts)} items, {results["tokens_mean"]} tokens on average '
        f'({results["truncated_items"]} truncated at {encoder.config.max_seq_length}); '
        f'encoder loaded in {load_s:.2f} s on {results["device"]}')
  for i in range(_REPEATS.value):
    start = time.perf_counter()
    vectors = embeddings.embed_texts(texts, encoder, batch_size=_BATCH.value)
    seconds = time.perf_counter() - start
    results['passes'].append({'seconds': round(seconds, 3),
                              'items_per_s': round(len(texts) / seconds, 1)})
    print(f'pass {i + 1}{" (includes compilation)" if i == 0 else ""}: {seconds:.2f} s total, '
          f'{len(texts) / seconds:.1f} items/s')
  assert vectors.shape == (len(texts), encoder.config.hidden)
  assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
  print(json.dumps(results, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, results)


if __name__ == '__main__':
  app.run(main)
