"""transformers as the reference for the decoder: same weights, official-style beam search.

Shared by experiments/bench_hf.py and tests/hf_parity_test.py. Our parameters go into
transformers' `Qwen2ForCausalLM` through `hf_convert.params_to_hf_state_dict`; beam search on
that side is the official MiniOneRec style (`generate` with `prefix_allowed_tokens_fn` over a
table from each generated SID prefix to the tokens that may follow it). The functions that run
the PyTorch model import torch and transformers when called (the 'bench' extra), so this module
imports without them; the rest (random catalogues and histories, ranked-list comparisons) is
numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.data import sid_sequences
from minirec_jax.evaluation import generative
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert
from minirec_jax.semantic_ids import trie as trie_lib

if TYPE_CHECKING:
  import torch
  import transformers


def hf_model(config: decoder_lib.DecoderConfig, params,
             **token_ids) -> transformers.PreTrainedModel:
  """transformers' causal LM (float32, eval mode) holding `params`: Qwen2ForCausalLM when the
  config has q/k/v biases (Qwen2 always has them), else LlamaForCausalLM. `token_ids` (e.g.
  bos_token_id, eos_token_id, pad_token_id) go into its config; pad defaults to the SID
  vocabulary's PAD."""
  import torch
  import transformers

  shape = dict(
      vocab_size=config.vocab_size, hidden_size=config.width, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
      max_position_embeddings=config.max_len, rms_norm_eps=config.rms_eps,
      rope_parameters={'rope_type': 'default', 'rope_theta': config.rope_theta},
      tie_word_embeddings=config.tie_embeddings,
      **{'pad_token_id': sid_sequences.PAD_TOKEN, **token_ids})
  if config.qkv_bias:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape))
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **shape, attention_bias=False, mlp_bias=False, hidden_act='silu'))
  state = {name: torch.from_numpy(np.array(value, np.float32))
           for name, value in hf_convert.params_to_hf_state_dict(params, config).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  # A tied LM head is the embedding tensor itself, so the export has no lm_head.weight.
  tied = {'lm_head.weight'} if config.tie_embeddings else set()
  if set(missing) - tied or unexpected:
    raise ValueError(f'weights do not fit {type(model).__name__}: missing '
                     f'{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}')
  return model.eval()


def random_sids(num_items: int, num_levels: int, codebook_size: int,
                seed: int = 0) -> np.ndarray:
  """`num_items` distinct random SIDs, int `[num_items, num_levels]`."""
  flat = np.random.default_rng(seed).choice(codebook_size ** num_levels, num_items, replace=False)
  powers = codebook_size ** np.arange(num_levels - 1, -1, -1)
  return flat[:, None] // powers % codebook_size


def random_histories(num_items: int, users: int, max_items: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """History item ids `[users, max_items]` (-1 after the end) and lengths `[users]` in 1..max."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_items + 1, users)
  history = rng.integers(0, num_items, (users, max_items))
  history[np.arange(max_items)[None] >= lengths[:, None]] = -1
  return history, lengths


def prefix_table(item_tokens: np.ndarray) -> dict[tuple[int, ...], list[int]]:
  """The official constraint: generated SID-token prefix -> the tokens that may follow it."""
  table: dict[tuple[int, ...], set[int]] = {}
  for row in item_tokens.tolist():
    for level, token in enumerate(row):
      table.setdefault(tuple(row[:level]), set()).add(token)
  return {prefix: sorted(tokens) for prefix, tokens in table.items()}


def allowed_tokens_fn(table, prompt_len: int) -> Callable[[int, torch.Tensor], list[int]]:
  """`prefix_allowed_tokens_fn` for prompts of `prompt_len` tokens (left-padded to one length)."""
  # A prefix off the catalogue only ever follows a step already scored -inf; PAD keeps the mask
  # non-empty (transformers refuses an empty list) without making that beam competitive.
  dead = [sid_sequences.PAD_TOKEN]

  def fn(batch_id: int, sequence: torch.Tensor) -> list[int]:
    del batch_id
    return table.get(tuple(sequence[prompt_len:].tolist()), dead)

  return fn


def hf_beam_search(model, prompts: dict[str, np.ndarray], table, *, beam: int,
                   num_levels: int) -> tuple[np.ndarray, np.ndarray]:
  """Official-style constrained beam search: SID tokens `[b, beam, L]`, scores `[b, beam]`."""
  import torch

  tokens = torch.from_numpy(prompts['tokens']).long()
  out = model.generate(
      input_ids=tokens, attention_mask=torch.from_numpy(prompts['mask']).long(),
      num_beams=beam, num_return_sequences=beam, max_new_tokens=num_levels, do_sample=False,
      length_penalty=0.0, prefix_allowed_tokens_fn=allowed_tokens_fn(table, tokens.shape[1]),
      pad_token_id=sid_sequences.PAD_TOKEN, return_dict_in_generate=True, output_scores=True)
  batch = tokens.shape[0]
  generated = out.sequences[:, tokens.shape[1]:].numpy().reshape(batch, beam, num_levels)
  return generated, out.sequences_scores.numpy().reshape(batch, beam)


def tokens_to_items(rec: generative.Recommender, sid_tokens: np.ndarray) -> np.ndarray:
  """SID tokens `[..., L]` -> representative item ids `[...]` (-1 off the catalogue)."""
  codes = rec.token_map.token_codes(sid_tokens)
  leaves = np.asarray(trie_lib.codes_to_items(rec.trie, jnp.asarray(codes, jnp.int32)))
  return np.where(leaves >= 0, np.asarray(rec.group_items)[np.maximum(leaves, 0)], -1)


def ranked_agreement(ids_a, scores_a, ids_b, scores_b, k: int,
                     tol: float) -> tuple[np.ndarray, np.ndarray]:
  """Per row: (top-k ids equal, equal ties aside), for ranked lists `[rows, >= k+1]`.

  Ties aside: the two sides' scores agree within `tol` at every rank, and wherever the ids
  differ, list a's score there is within `tol` of a neighbouring rank's (a near-tie that float
  rounding may order either way).
  """
  same = ids_a[:, :k] == ids_b[:, :k]
  close = np.abs(scores_a[:, :k] - scores_b[:, :k]) <= tol
  tie_next = np.abs(np.diff(scores_a[:, :k + 1], axis=1)) <= tol       # rank r ~ rank r+1
  tie_prev = np.pad(tie_next[:, :-1], ((0, 0), (1, 0)))                # rank r ~ rank r-1
  return same.all(1), close.all(1) & (same | tie_next | tie_prev).all(1)


def top_tokens(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k+1 largest logits per row `[rows, vocab]`: (ids, values), best first."""
  ids = np.argsort(-logits, axis=1, kind='stable')[:, :k + 1]
  return ids, np.take_along_axis(logits, ids, axis=1)


def logits_parity(config, params, model, prompts: dict[str, np.ndarray], k: int,
                  tol: float) -> dict:
  """Full-sequence logits on left-padded prompts, compared over the real tokens."""
  import torch

  mask = prompts['mask']
  ours = jax.jit(decoder_lib.Decoder(config).apply)(
      {'params': params}, prompts['tokens'], prompts['positions'],
      decoder_lib.causal_mask(jnp.asarray(mask)))
  with torch.inference_mode():
    theirs = model(input_ids=torch.from_numpy(prompts['tokens']).long(),
                   attention_mask=torch.from_numpy(mask).long(),
                   position_ids=torch.from_numpy(prompts['positions']).long()).logits.numpy()
  ours, theirs = np.asarray(ours)[mask], theirs[mask]
  strict, ties_aside = ranked_agreement(*top_tokens(ours, k), *top_tokens(theirs, k), k, tol)
  return {'positions': int(mask.sum()), 'logits_max_abs_diff': float(np.abs(ours - theirs).max()),
          f'top{k}_tokens_equal_rate': float(strict.mean()),
          f'top{k}_tokens_agree_ties_aside_rate': float(ties_aside.mean())}


def catalogue_items(catalogue: dict, tokens: np.ndarray, scores: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
  """A beam search's SID tokens `[users, beam, L]` and scores -> the top-k items `[users, k]`
  (-1 where fewer) and their SIDs' scores, each SID expanded into its items through an
  exported `sid_catalogue.json` (`catalogue`), as a user of the exported folder would."""
  by_tokens = {tuple(g['tokens']): g['items'] for g in catalogue['groups']}
  items = np.full((len(tokens), k), -1)
  item_scores = np.zeros((len(tokens), k))
  for row in range(len(tokens)):
    ranked = [(item, score) for sid, score in zip(np.asarray(tokens[row]).tolist(), scores[row])
              for item in by_tokens.get(tuple(sid), [])][:k]
    items[row, :len(ranked)] = [item for item, _ in ranked]
    item_scores[row, :len(ranked)] = [score for _, score in ranked]
  return items, item_scores
