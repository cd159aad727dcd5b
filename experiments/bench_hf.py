"""Side by side with the official PyTorch stack: parity and speed against transformers.

  python experiments/bench_hf.py [--variant=S] [--users=64] [--hf_batch=64] \
      [--output=docs/bench/hf.json]

Needs the 'bench' extra (`pip install -e '.[bench]'`: torch CPU and transformers); the library
never imports them. Both sides get the same random float32 weights: ours exported with
`hf_convert.params_to_hf_state_dict` into transformers' `Qwen2ForCausalLM` (the reference side
lives in minirec_jax/testing/hf_reference.py, shared with tests/hf_parity_test.py). The
catalogue is the official Industrial SIDs (3 levels x 256 codes, 3,670 distinct SIDs for 3,686
items) when the shared data is present, else 3,686 random distinct SIDs. Prompts are random
histories of 1..10 catalogue items, left-padded; HF derives position ids from the attention
mask exactly as `history_prompts` does (0 at each row's first real token), so both sides see
the same input.

(a) Parity: full-sequence logits on the prompts (max abs difference over real tokens), the
    top-10 next tokens at every real position, and the top-10 items of beam-50 constrained
    decoding for every user. Ranked lists "agree ties aside" when their scores agree within
    --tie_tol rank by rank and their ids differ only at ranks within --tie_tol of a neighbour.
(b) Decoding: beam-50 constrained decoding of --users prompts, warm-up excluded, best of
    --repeats. Theirs is the official style, `generate(num_beams=50, num_return_sequences=50,
    length_penalty=0.0, do_sample=False, prefix_allowed_tokens_fn=...)` with a hash table from
    the generated prefix to its allowed next tokens, --hf_batch users per call (default: all,
    as ours). Ours is `Recommender.recommend`, all users in one call. Our vocabulary has no
    '\\n' and EOS tokens, so both generate exactly L tokens per SID (the official prompt format
    adds those 2). transformers expands every prompt to its 50 beams before the prefill, so it
    reads each prompt 50 times; ours reads it once and its 50 beams share that prompt's KV
    cache (`decoder.prefill_shared`).
(c) Training: one SFT step on a [32, 128] batch (the SFT config's batch and seq_len, one
    segment per row so both sides run plain causal attention): our jitted `make_sft_step` vs an
    eager PyTorch step (forward, cross-entropy, backward, clip, AdamW with the same settings),
    timed in --train_rounds alternating rounds of --train_steps steps; the median round counts.

Speed-ups are their time / our time (> 1: ours is faster). torch runs os.cpu_count() threads.
"""

import json
import os
import statistics
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from minirec_jax.data import sid_sequences
from minirec_jax.evaluation import generative
from minirec_jax.infra import host_memory
from minirec_jax.infra import io_utils
from minirec_jax.infra import optim
from minirec_jax.infra import timing
from minirec_jax.infra.config_utils import OFFICIAL_ROOT, load_config
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.semantic_ids import catalogue as catalogue_lib
from minirec_jax.semantic_ids import trie as trie_lib
from minirec_jax.testing import hf_reference
from minirec_jax.training import parallel
from minirec_jax.training import sft
from minirec_jax.training import state as state_lib

_VARIANT = flags.DEFINE_string('variant', 'S', 'Model variant (models/variants.py).')
_USERS = flags.DEFINE_integer('users', 64, 'Prompts decoded by each side.')
_HF_BATCH = flags.DEFINE_integer('hf_batch', 64, 'Users per transformers generate() call.')
_BEAM = flags.DEFINE_integer('beam', 50, 'Beam width.')
_TOP = flags.DEFINE_integer('top', 10, 'Length of the compared ranked lists.')
_TIE_TOL = flags.DEFINE_float('tie_tol', 1e-4, 'Score gap below which two ranks are a tie.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed decoding repetitions (best is kept).')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 5, 'Timed training steps per side and round.')
_TRAIN_ROUNDS = flags.DEFINE_integer('train_rounds', 6, 'Alternating timing rounds per side '
                                     '(the median round is reported).')
_INDEX = flags.DEFINE_string(
    'index_json', os.path.join(OFFICIAL_ROOT, 'index', 'Industrial_and_Scientific.index.json'),
    'Official SIDs; random SIDs of the same shape when the file is absent.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')

_RANDOM_ITEMS, _LEVELS, _CODES = 3686, 3, 256
_MAX_ITEMS = 10  # prompt length in items, the official max history


def load_catalogue(index_json: str) -> tuple[catalogue_lib.SidCatalogue, str]:
  """The official SIDs at `index_json`, else random distinct SIDs; and a description."""
  if os.path.isfile(index_json):
    codes, codebook_size = trie_lib.read_index_json(index_json)
    return catalogue_lib.SidCatalogue.from_codes(codes, codebook_size), index_json
  codes = hf_reference.random_sids(_RANDOM_ITEMS, _LEVELS, _CODES)
  return catalogue_lib.SidCatalogue.from_codes(codes, _CODES), 'random distinct SIDs'


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
  """Calls fn once untimed (warm-up, compilation), then `repeats` times: (best s, all s)."""
  times = timing.timed_calls(fn, repeats)
  return min(times), times


def decode_bench(rec, params, model, history, lengths, *, beam: int, hf_batch: int, k: int,
                 tol: float, repeats: int) -> dict:
  """Beam-`beam` constrained decoding on both sides: agreement of the top-k items and timing."""
  table = hf_reference.prefix_table(rec.item_tokens)
  chunks = [slice(i, i + hf_batch) for i in range(0, len(lengths), hf_batch)]

  def ours():
    return rec.rank(params, rec.prompts(history, lengths), beam)  # ranked SIDs, as HF's

  def theirs():
    out = [hf_reference.hf_beam_search(model, rec.prompts(history[c], lengths[c]), table,
                                       beam=beam, num_levels=rec.sids.num_levels)
           for c in chunks]
    return np.concatenate([t for t, _ in out]), np.concatenate([s for _, s in out])

  our_items, our_scores = ours()
  hf_tokens, hf_scores = theirs()
  hf_items = hf_reference.tokens_to_items(rec, hf_tokens)
  strict, ties_aside = hf_reference.ranked_agreement(our_items, our_scores, hf_items, hf_scores,
                                                     k, tol)
  our_s, our_times = best_time(ours, repeats)
  hf_s, hf_times = best_time(theirs, repeats)
  return {f'top{k}_items_equal_rate': float(strict.mean()),
          f'top{k}_items_agree_ties_aside_rate': float(ties_aside.mean()),
          f'top{k}_scores_max_abs_diff': float(np.abs(our_scores[:, :k] - hf_scores[:, :k]).max()),
          'hf_invalid_top_items': int(np.sum(hf_items[:, :k] < 0)),
          'ours_s': our_s, 'hf_s': hf_s, 'ours_times_s': our_times, 'hf_times_s': hf_times,
          'time_ratio_ours_over_hf': our_s / hf_s, 'speedup_vs_hf': hf_s / our_s}


def sft_batch(vocab: sid_sequences.SidVocab, batch: int, seq_len: int,
              seed: int = 0) -> dict[str, np.ndarray]:
  """Random SID tokens as a packed SFT batch with one full segment per row."""
  rng = np.random.default_rng(seed)
  stream = rng.integers(vocab.sid_offset, vocab.vocab_size, (batch, seq_len + 1), np.int32)
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len))
  return {'tokens': stream[:, :-1], 'positions': np.array(positions),
          'segment_ids': np.ones((batch, seq_len), np.int32), 'labels': stream[:, 1:],
          'weights': np.ones((batch, seq_len), np.float32)}


def alternating_step_times(sides: dict[str, Callable[[], float]], steps: int, rounds: int
                           ) -> tuple[dict[str, float], dict[str, list[float]]]:
  """Times the sides in alternating rounds of `steps` calls each (after 3 warm-up calls).

  Each round starts after a 1 s pause and one untimed call, so neither side's worker threads
  (OpenMP spins after a parallel region) still hold a core when the other side starts.
  Returns ({side: loss of its first call}, {side: seconds per step of each round}).
  """
  first_losses = {name: step() for name, step in sides.items()}
  for step in sides.values():
    step()
    step()
  per_round = {name: [] for name in sides}
  for _ in range(rounds):
    for name, step in sides.items():
      time.sleep(1.0)
      step()
      start = time.perf_counter()
      for _ in range(steps):
        step()
      per_round[name].append((time.perf_counter() - start) / steps)
  return first_losses, per_round


def our_train_step(config, params, optim_config, batch) -> Callable[[], float]:
  """Our jitted SFT step on a fixed batch; each call runs one step and returns its loss."""
  tx, _ = optim.from_config(optim_config, total_steps=1000)
  state = state_lib.TrainState.create(apply_fn=None, params=jax.tree.map(jnp.array, params), tx=tx)
  mesh = parallel.make_mesh()
  step = parallel.jit_data_parallel(
      sft.make_sft_step(sft.decoder_apply_fn(decoder_lib.Decoder(config))), mesh)
  batch = parallel.shard_batch(batch, mesh)
  rng = jax.random.key(0)

  def run() -> float:
    nonlocal state
    state, metrics = step(state, batch, rng)
    return float(metrics['loss'])  # blocks until the step is done

  return run


def torch_train_step(model, optim_config, batch) -> Callable[[], float]:
  """A plain eager PyTorch step: forward, weighted cross-entropy, backward, clip, AdamW."""
  model.train()
  o = optim_config
  opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                          weight_decay=o.weight_decay)
  tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in batch.items()}
  labels, weights = tensors['labels'].long(), tensors['weights']

  def run() -> float:
    logits = model(input_ids=tensors['tokens'].long(), position_ids=tensors['positions'].long(),
                   use_cache=False).logits
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                               reduction='none')
    loss = (losses * weights.flatten()).sum() / weights.sum().clamp(min=1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o.clip_norm:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    opt.step()
    return loss.item()

  return run


def train_bench(config, params, model, vocab, steps: int, rounds: int) -> dict:
  sft_config = load_config('configs/sft.py:dataset=industrial')
  batch_size, seq_len = sft_config.train.batch_size, sft_config.train.seq_len
  batch = sft_batch(vocab, batch_size, seq_len)
  losses, per_round = alternating_step_times(
      {'ours': our_train_step(config, params, sft_config.optim, batch),
       'torch': torch_train_step(model, sft_config.optim, batch)}, steps, rounds)
  ours, torch_s = statistics.median(per_round['ours']), statistics.median(per_round['torch'])
  return {'batch': batch_size, 'seq_len': seq_len, 'steps_per_round': steps, 'rounds': rounds,
          'first_loss_ours': losses['ours'], 'first_loss_torch': losses['torch'],
          'ours_s_per_step_rounds': per_round['ours'],
          'torch_s_per_step_rounds': per_round['torch'],
          'ours_s_per_step': ours, 'torch_s_per_step': torch_s,
          'time_ratio_ours_over_torch': ours / torch_s, 'speedup_vs_torch': torch_s / ours}


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  load_before = os.getloadavg()
  torch.set_num_threads(os.cpu_count())
  sids, sid_source = load_catalogue(_INDEX.value)
  vocab = sid_sequences.SidVocab(sids.num_levels, sids.codebook_size)
  rec = generative.Recommender(variants.decoder_config(_VARIANT.value, vocab.vocab_size), sids,
                               _MAX_ITEMS, np.zeros(sids.num_items))
  config = rec.config
  tokens = jnp.zeros((1, 1), jnp.int32)
  params = jax.jit(decoder_lib.Decoder(config).init)(jax.random.key(0), tokens, tokens)['params']
  model = hf_reference.hf_model(config, params)
  history, lengths = hf_reference.random_histories(sids.num_items, _USERS.value, _MAX_ITEMS)
  k, tol = _TOP.value, _TIE_TOL.value
  parity = hf_reference.logits_parity(config, params, model, rec.prompts(history, lengths), k, tol)
  print('parity:', parity)
  decode = decode_bench(rec, params, model, history, lengths, beam=_BEAM.value,
                        hf_batch=_HF_BATCH.value, k=k, tol=tol, repeats=_REPEATS.value)
  print('decode:', decode)
  train = train_bench(config, params, model, vocab, _TRAIN_STEPS.value, _TRAIN_ROUNDS.value)
  print('train:', train)
  result = {
      **timing.machine_record(),
      'load_average_before': list(load_before), 'load_average_after': list(os.getloadavg()),
      'torch_threads': torch.get_num_threads(),
      'peer_versions': {'torch': torch.__version__, 'transformers': transformers.__version__},
      'model': _VARIANT.value, 'width': config.width, 'depth': config.depth,
      'vocab_size': config.vocab_size, **decoder_lib.count_params(config),
      'catalogue': sid_source, 'items': sids.num_items,
      'distinct_sids': int(len(np.unique(sids.item_to_group))),
      'users': _USERS.value, 'prompt_tokens': _MAX_ITEMS * sids.num_levels, 'beam': _BEAM.value,
      'hf_batch': _HF_BATCH.value, 'ours_batch': _USERS.value, 'tie_tol': tol,
      'parity': parity, 'decode': decode, 'train': train,
      'targets': {'logits_within_1e-4': parity['logits_max_abs_diff'] <= 1e-4,
                  'decode_5x_faster': decode['speedup_vs_hf'] >= 5.0,
                  'train_at_least_as_fast': train['speedup_vs_torch'] >= 1.0}}
  print(json.dumps(result, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
