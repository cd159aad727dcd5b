"""minirec-jax: generative recommendation with semantic IDs (MiniOneRec) in pure JAX.

The public API below is importable from the package (`import minirec_jax as mr; mr.Decoder`).
Names load on first use, so `import minirec_jax` stays cheap (it never imports TensorFlow).
Shapes: b = batch, s = sequence, G = candidates per prompt, L = SID levels, K = codes per level.
Every `make_*_step` returns an un-jitted pure `step(state, [frozen...,] batch, rng) ->
(state, metrics)`; jit it yourself or with `jit_data_parallel`.

Models
  DecoderConfig(vocab_size, width, depth, num_heads, num_kv_heads, mlp_dim, ...): frozen config.
  Decoder(config).apply({'params': p}, tokens [b, s], positions [b, s], mask bool [b, s, s]
    | None) -> float32 logits [b, s, vocab]: Qwen2-architecture decoder (mask None: causal).
  decoder_config(variant, vocab_size, **overrides) -> DecoderConfig: a named size of VARIANTS.
  SidVocab(num_levels, codebook_size): our SID-only token layout; .vocab_size, .token_map,
    .item_tokens(codes [n, L]).
  SidTokenMap(table int32 [L, K], terminator=()): vocabulary id of every (level, code) and the
    tokens forced after a SID (a language model's '\\n', eos); .item_tokens(codes [n, L]).
  extend_vocabulary(tokenizer, decoder_config, params, num_levels, codebook_size, *, codes=None,
    end_text='\\n', noise_scale=0.0, noise_relative=False, seed=0) -> (tokenizer,
    decoder_config, params, token_map): a pretrained LM with one added token per SID code (new
    rows: mean of the old ones, plus noise_scale (x the matrix's element std if relative)).
  SASRecConfig, SASRec(config): the SASRec baseline / collaborative reward model (linen).

Training steps
  TrainState.create(apply_fn=None, params=..., tx=optax_tx): flax TrainState.
  make_sft_step(apply_fn, *, axis_name=None) -> step(state, batch, rng): next-SID cross-entropy;
    apply_fn(params, tokens, positions, mask, rng) -> logits; batch: tokens, positions,
    segment_ids, labels int32 [b, s] and weights float32 [b, s] (packed sequences).
  make_sft_eval_step(apply_fn) -> eval_step(params, batch) -> {loss_sum, weight_sum, correct_sum}.
  make_grpo_step(decoder_config, *, token_map, item_to_group, codes_table, weights, ...)
    -> step(state, ref_params, reward_params, batch, rng): one GRPO update.
  make_sasrec_train_step(ranker, loss, num_items) -> step(state, batch, rng): SASRec/BPR step.

Devices (minirec_jax.infra.distributed.initialize() first on multi-host runs)
  make_mesh(num_devices=None, fsdp=1) -> Mesh ('data', 'fsdp') of shape [devices/fsdp, fsdp].
  shard_batch(batch, mesh): this process's rows [b_local, ...] -> global arrays split over all
    devices.
  state_sharding(state, mesh): replicated, or FSDP (large arrays split over 'fsdp') shardings.
  jit_data_parallel(step, mesh, *, num_frozen=0, state_sharding=None, max_traces=None): jit
    with the state donated and the batch sharded; max_traces makes a retrace past it an error.
  pmap_data_parallel(step, *, num_frozen=0): pmap over 'data' (build step with axis_name='data').

Decoding
  build_trie(codes int [num_items, L], codebook_size, *, dedupe='error') -> SidTrie (jittable).
  constrained_beam_search(first_logits [b, vocab], cache, logits_fn, reorder_cache, trie, *,
    beam_size, token_map) -> BeamResult(items [b, beam], codes [b, beam, L], scores [b, beam]);
    the token map's terminator tokens are forced after the L SID levels and scored.
  beam_search_prompts(decoder_config, params, trie, tokens, positions, mask [b, T], *,
    beam_size, token_map) -> BeamResult: prefill + constrained beam search with the KV cache.
  sample_prompts(decoder_config, params, trie, tokens, positions, mask, rng, *, num_samples,
    token_map, temperature=1.0) -> SampleResult: trie-masked sampling (RL rollouts).

Rewards (candidates int32 [b, G] -> float32 [b, G])
  rule_reward(items, targets [b], item_to_group): 1 for the target's SID, else 0.
  rank_reward(items, targets, item_to_group): official NDCG-style penalty on misses.
  prefix_reward(items, targets, codes [num_items, L]): fraction of the target's SID prefix.
  collaborative_reward(scores [b, G]): a frozen CF model's scores, z-scored within the group.
  combine_rewards(weights {name: w}, parts {name: [b, G]}) -> [b, G]: weighted sum.

GRPO
  group_advantages(rewards [B, G], *, ddof=1, eps=1e-4) -> [B, G]: group-relative advantages.
  kl_estimate(log_probs [N, L], ref_log_probs [N, L], estimator 'k1'|'k3') -> [N, L].
  grpo_loss(log_probs, old_log_probs, ref_log_probs [N, L], advantages [N], mask [N, L], *,
    clip_eps, beta, kl_estimator, aggregation) -> (loss, metrics): clipped surrogate + beta KL.

Metrics (official HR/NDCG/MRR@K)
  compute_metrics(ranked_items [b, k], targets [b], ks, *, item_to_group, valid) -> dict: numpy.
  batch_metrics_jnp(ranked_items, targets, ks, *, valid, item_to_group) -> BatchMetrics: jitted.
  RankCounts.from_batch(batch_metrics) summed over batches, then .means(ks): exact totals.
"""

import importlib

__version__ = '0.1.0'

# public name -> (module, attribute)
_EXPORTS = {
    'Decoder': ('minirec_jax.models.decoder', 'Decoder'),
    'DecoderConfig': ('minirec_jax.models.decoder', 'DecoderConfig'),
    'decoder_config': ('minirec_jax.models.variants', 'decoder_config'),
    'VARIANTS': ('minirec_jax.models.variants', 'VARIANTS'),
    'SidVocab': ('minirec_jax.data.sid_sequences', 'SidVocab'),
    'SidTokenMap': ('minirec_jax.data.sid_sequences', 'SidTokenMap'),
    'extend_vocabulary': ('minirec_jax.models.vocab_extension', 'extend'),
    'SASRec': ('minirec_jax.models.sasrec', 'SASRec'),
    'SASRecConfig': ('minirec_jax.models.sasrec', 'SASRecConfig'),
    'TrainState': ('minirec_jax.training.state', 'TrainState'),
    'make_sft_step': ('minirec_jax.training.sft', 'make_sft_step'),
    'make_sft_eval_step': ('minirec_jax.training.sft', 'make_sft_eval_step'),
    'make_grpo_step': ('minirec_jax.rl.step', 'make_grpo_step'),
    'make_sasrec_train_step': ('minirec_jax.training.sasrec', 'make_train_step'),
    'make_mesh': ('minirec_jax.training.parallel', 'make_mesh'),
    'shard_batch': ('minirec_jax.training.parallel', 'shard_batch'),
    'state_sharding': ('minirec_jax.training.parallel', 'state_sharding'),
    'jit_data_parallel': ('minirec_jax.training.parallel', 'jit_data_parallel'),
    'pmap_data_parallel': ('minirec_jax.training.parallel', 'pmap_data_parallel'),
    'build_trie': ('minirec_jax.semantic_ids.trie', 'build_trie'),
    'constrained_beam_search': ('minirec_jax.decoding.beam_search', 'constrained_beam_search'),
    'beam_search_prompts': ('minirec_jax.decoding.prompted', 'beam_search_prompts'),
    'sample_prompts': ('minirec_jax.decoding.prompted', 'sample_prompts'),
    'rule_reward': ('minirec_jax.rl.rewards', 'rule_reward'),
    'rank_reward': ('minirec_jax.rl.rewards', 'rank_reward'),
    'prefix_reward': ('minirec_jax.rl.rewards', 'prefix_reward'),
    'collaborative_reward': ('minirec_jax.rl.rewards', 'collaborative_reward'),
    'combine_rewards': ('minirec_jax.rl.rewards', 'combine'),
    'group_advantages': ('minirec_jax.rl.grpo', 'group_advantages'),
    'kl_estimate': ('minirec_jax.rl.grpo', 'kl_estimate'),
    'grpo_loss': ('minirec_jax.rl.grpo', 'grpo_loss'),
    'compute_metrics': ('minirec_jax.evaluation.ranking', 'compute_metrics'),
    'batch_metrics_jnp': ('minirec_jax.evaluation.ranking', 'batch_metrics_jnp'),
    'RankCounts': ('minirec_jax.evaluation.ranking', 'RankCounts'),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attribute = _EXPORTS[name]
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
