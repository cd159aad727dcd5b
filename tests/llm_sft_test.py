"""SFT and GRPO of a pretrained language-model policy: compact targets, frozen backbones, the
prompt the recommender decodes with, and the whole pipeline on a tiny random Llama written at
test time (`configs/pipeline.py:tiny,backbone=hf:<folder>`; nothing is downloaded)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minirec_jax import pipeline as ep
from minirec_jax.data import llm_tasks
from minirec_jax.data import schema
from minirec_jax.data.text_tokenizer import TextTokenizer
from minirec_jax.infra import optim
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.loops import grpo as grpo_loop
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import vocab_extension
from minirec_jax.rl import prompts as rl_prompts
from minirec_jax.testing import tiny_llm
from minirec_jax.training import sft
from minirec_jax.training import state as state_lib

CONFIG = decoder_lib.DecoderConfig(vocab_size=40, width=16, depth=3, num_heads=2,
                                   num_kv_heads=1, mlp_dim=32, tie_embeddings=True, max_len=64)


def _packed(rng, rows=4, seq=12):
  tokens = rng.integers(1, CONFIG.vocab_size, (rows, seq)).astype(np.int32)
  segment_ids = np.repeat([[1] * 7 + [2] * 5], rows, 0).astype(np.int32)
  positions = np.concatenate([np.arange(7), np.arange(5)])[None].repeat(rows, 0).astype(np.int32)
  labels = rng.integers(1, CONFIG.vocab_size, (rows, seq)).astype(np.int32)
  weights = (rng.random((rows, seq)) < 0.3).astype(np.float32)
  weights[0] = 0.0  # a row without targets
  return {'tokens': tokens, 'positions': positions, 'segment_ids': segment_ids,
          'labels': labels, 'weights': weights}


def _params(config=CONFIG, seed=0):
  return decoder_lib.Decoder(config).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32),
                                          jnp.zeros((1, 4), jnp.int32))['params']


def test_compact_targets_give_the_loss_of_the_full_logits():
  packed = _packed(np.random.default_rng(0))
  compact = sft.compact_targets(packed['labels'], packed['weights'])
  assert compact['target_positions'].shape[1] == int((packed['weights'] > 0).sum(1).max())
  eval_step = jax.jit(sft.make_sft_eval_step(sft.decoder_apply_fn(decoder_lib.Decoder(CONFIG))))
  params = _params()
  full = eval_step(params, packed)
  short = eval_step(params, {k: packed[k] for k in ('tokens', 'positions', 'segment_ids')}
                    | compact)
  for key in ('loss_sum', 'weight_sum', 'correct_sum'):
    np.testing.assert_allclose(short[key], full[key], rtol=1e-5)
  with pytest.raises(ValueError, match='more than num_targets'):
    sft.compact_targets(packed['labels'], packed['weights'], num_targets=1)


def test_frozen_backbone_trains_only_new_rows_and_top_blocks():
  new_from = 30
  mask = vocab_extension.trainable_mask(CONFIG, new_from, top_layers=1)
  tx = optim.freeze(optax.adamw(1e-2, weight_decay=0.1), mask)
  params = _params()
  state = state_lib.TrainState.create(apply_fn=None, params=params, tx=tx)
  step = jax.jit(sft.make_sft_step(sft.decoder_apply_fn(decoder_lib.Decoder(CONFIG))))
  packed = _packed(np.random.default_rng(1))
  packed['labels'][:] = new_from + 3  # gradients reach old rows too (through the softmax)
  for _ in range(3):
    state, _ = step(state, packed, jax.random.key(0))
  after, before = state.params, params
  embed_after, embed_before = after['embed_tokens']['embedding'], before['embed_tokens'][
      'embedding']
  np.testing.assert_array_equal(embed_after[:new_from], embed_before[:new_from])
  assert not np.allclose(embed_after[new_from:], embed_before[new_from:])
  for i in range(CONFIG.depth - 1):
    jax.tree.map(np.testing.assert_array_equal, after[f'layers_{i}'], before[f'layers_{i}'])
  top = f'layers_{CONFIG.depth - 1}'
  assert not np.allclose(after[top]['mlp']['up_proj']['kernel'],
                         before[top]['mlp']['up_proj']['kernel'])
  with pytest.raises(ValueError, match='top_layers'):
    vocab_extension.trainable_mask(CONFIG, new_from, top_layers=CONFIG.depth + 1)


def test_new_rows_lr_scale_multiplies_only_the_new_rows_updates():
  new_from, scale = 30, 8.0
  step = jax.jit(sft.make_sft_step(sft.decoder_apply_fn(decoder_lib.Decoder(CONFIG))))
  packed = _packed(np.random.default_rng(2))
  packed['labels'][:] = new_from + 1
  params = _params()
  deltas = []
  for tx in (optax.adam(1e-3),
             optim.scale_updates(optax.adam(1e-3),
                                 vocab_extension.new_row_lr_scales(CONFIG, new_from, scale))):
    state = state_lib.TrainState.create(apply_fn=None, params=params, tx=tx)
    state, _ = step(state, packed, jax.random.key(0))
    deltas.append(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params, params))
  plain, scaled = deltas
  embed_plain, embed_scaled = (d['embed_tokens']['embedding'] for d in deltas)
  assert np.abs(embed_plain[new_from:]).max() > 0
  np.testing.assert_allclose(embed_scaled[new_from:], scale * embed_plain[new_from:],
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(embed_scaled[:new_from], embed_plain[:new_from], rtol=1e-5,
                             atol=1e-8)
  np.testing.assert_allclose(scaled['layers_0']['mlp']['up_proj']['kernel'],
                             plain['layers_0']['mlp']['up_proj']['kernel'], rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match='> 0'):
    vocab_extension.new_row_lr_scales(CONFIG, new_from, 0.0)


def _items():
  titles = [f'Item number {i}' for i in range(6)]
  sids = llm_tasks.sid_strings(np.array([[i % 2, i, 0] for i in range(6)]))
  return schema.ItemTable(title=titles, description=[''] * 6, sid=sids)


@pytest.mark.parametrize('wording', ['short', 'official'])
def test_recommender_prompt_is_the_training_prompt(tmp_path, wording):
  folder = tiny_llm.write_tiny_llama(str(tmp_path / 'llama'))
  tokenizer = vocab_extension.add_sid_tokens(TextTokenizer.from_hf_directory(folder), 3, 6)
  rows = [{'user_id': 'u', 'history': [0, 1], 'target': 2},
          {'user_id': 'u', 'history': [0, 1, 2], 'target': 3},
          {'user_id': 'v', 'history': [4], 'target': 5}]
  mixture = llm_tasks.TaskMixture(wording=wording, alignment=0, sid_history_title=0,
                                  title_history_title=0, title_history_sid=0,
                                  chain_next_sid=wording == 'short')
  examples = llm_tasks.mixture_examples(rows, _items(), mixture)
  tokenized = llm_tasks.tokenize_examples(examples, tokenizer)
  prompts = llm_tasks.NextSidPrompts(_items(), tokenizer, wording, max_items=10)
  history = np.full((3, 3), -1)
  for r, row in enumerate(rows):
    history[r, :len(row['history'])] = row['history']
  batch = prompts(history, np.array([len(r['history']) for r in rows]))
  assert batch['tokens'].shape[1] == prompts.width == len(prompts.ids([[5] * 10])[0])
  sid_len = 3  # SID tokens of one item
  for i in range(len(tokenized)):
    ids, supervised = tokenized.example(i)
    first_target = int(np.argmax(supervised))
    for k, row in enumerate(tokenized.sources[i]):
      # The k-th target of a chain follows its row's prompt and the k earlier targets.
      want = ids[:first_target + k * sid_len]
      got = batch['tokens'][row][batch['mask'][row]]
      np.testing.assert_array_equal(got, want)
  assert len(prompts.ids([[0, 1]])[0]) > 0


@pytest.fixture(scope='module')
def finished_llm_pipeline(tmp_path_factory):
  root = tmp_path_factory.mktemp('llm_pipeline')
  folder = tiny_llm.write_tiny_llama(str(root / 'llama'))
  config = load_config(f'configs/pipeline.py:tiny,backbone=hf:{folder}')
  config.dataset.data.data_dir = str(root / 'tfds')
  # The LLM path is under test here; the default (LETTER) tokenizer is run by
  # run_pipeline_test.py. RQ-KMeans compiles nothing, which would dominate a tiny run.
  config.tokenizer.method, config.tokenizer.collab.mode = 'rqkmeans', 'none'
  for stage in ('sft', 'sasrec', 'popularity', 'bpr', 'grpo'):
    config[stage].mesh.num_devices = 1
  workdir = str(root / 'run')
  return folder, workdir, ep.run(config, workdir)


def test_language_model_pipeline_runs_end_to_end(finished_llm_pipeline):
  folder, workdir, result = finished_llm_pipeline
  assert result.status == {stage: 'ran' for stage in ep.STAGES if stage != 'tiger'}
  with open(os.path.join(workdir, 'sft', 'results.json')) as f:
    sft_results = json.load(f)
  assert sft_results['test']['examples'] > 0
  policy = artifacts.load_policy(os.path.join(workdir, 'grpo'))
  assert policy.sft_config.model.backbone == f'hf:{folder}'
  assert policy.name == 'GRPO (llama)'
  rec = policy.setup.recommender
  assert rec.token_map.terminator == (
      *policy.setup.language_model.tokenizer.encode('\n', add_special_tokens=False),
      policy.setup.language_model.tokenizer.eos_id)
  items, scores = rec.recommend(policy.params, np.array([[0, 1, 2]]), np.array([3]), k=5)
  assert items.shape == (1, 5) and (items >= 0).all()
  assert np.all(np.diff(scores[0]) <= 1e-6)
  with open(os.path.join(workdir, 'evaluation', 'results.json')) as f:
    table = json.dumps(json.load(f))
  assert 'SFT+GRPO (llama)' in table


def test_random_init_keeps_the_architecture_and_drops_the_weights(finished_llm_pipeline):
  _, workdir, _ = finished_llm_pipeline
  config = artifacts.workdir_config(os.path.join(workdir, 'sft'))
  pretrained = sft_loop.setup(config).language_model
  config.model.init = 'random'
  random = sft_loop.setup(config).language_model
  assert jax.tree.map(np.shape, random.params) == jax.tree.map(np.shape, pretrained.params)
  assert not np.allclose(random.params['embed_tokens']['embedding'],
                         pretrained.params['embed_tokens']['embedding'])
  config.model.init = 'scratch'
  with pytest.raises(ValueError, match='model.init'):
    sft_loop.setup(config)


def test_title_row_init_changes_only_the_sid_rows(finished_llm_pipeline):
  _, workdir, _ = finished_llm_pipeline
  config = artifacts.workdir_config(os.path.join(workdir, 'sft'))
  config.llm.noise_scale = 0.0  # the exact mean row, to tell the title rows apart from it
  mean = sft_loop.setup(config)
  config.llm.sid_row_init = 'titles'
  titles = sft_loop.setup(config)
  table = np.asarray(titles.recommender.token_map.table)
  sid_rows = table[table >= 0]
  before = mean.language_model.params['embed_tokens']['embedding']
  after = titles.language_model.params['embed_tokens']['embedding']
  others = np.setdiff1d(np.arange(len(after)), sid_rows)
  np.testing.assert_array_equal(after[others], before[others])
  assert len(np.unique(np.round(after[sid_rows], 5), axis=0)) > len(sid_rows) // 2
  assert len(np.unique(np.round(before[sid_rows], 5), axis=0)) == 1  # all the mean row
  config.llm.sid_row_init = 'words'
  with pytest.raises(ValueError, match='sid_row_init'):
    sft_loop.setup(config)


def test_sid_softmax_scores_only_sid_answers_in_training_and_decoding(finished_llm_pipeline):
  _, workdir, _ = finished_llm_pipeline
  config = artifacts.workdir_config(os.path.join(workdir, 'sft'))
  config.llm.sid_softmax = True
  s = sft_loop.setup(config)
  token_map = s.recommender.token_map
  rows = s.model_config.output_rows
  assert rows == token_map.generated_ids() and set(token_map.terminator) <= set(rows)
  assert len(rows) == token_map.table.size + len(token_map.terminator)
  train, _ = sft_loop.pack_splits(config, s)
  batch = {k: v[:2] for k, v in train.items()}
  # The loss is the cross-entropy of the full model's logits renormalised over the SID rows.
  params = s.language_model.params
  restricted = sft.make_sft_eval_step(sft.decoder_apply_fn(s.model))(params, batch)
  full_model = decoder_lib.Decoder(dataclasses.replace(s.model_config, output_rows=()))
  logits = full_model.apply({'params': params}, batch['tokens'], batch['positions'],
                            sft.segment_causal_mask(batch['segment_ids']),
                            head_positions=batch['target_positions'])
  index = np.searchsorted(rows, batch['target_labels'])
  log_probs = jax.nn.log_softmax(logits[..., np.asarray(rows)])
  want = -(np.take_along_axis(np.asarray(log_probs), index[..., None], -1)[..., 0]
           * batch['target_weights']).sum()
  np.testing.assert_allclose(restricted['loss_sum'], want, rtol=1e-5)
  full = sft.make_sft_eval_step(sft.decoder_apply_fn(full_model))(params, batch)
  assert restricted['loss_sum'] < full['loss_sum'] - 1e-3
  items, _ = s.recommender.recommend(params, np.array([[0, 1, 2]]), np.array([3]), k=5)
  assert items.shape == (1, 5) and (items >= 0).all()
  # Title answers need the whole vocabulary: refused, naming the task.
  config.llm.tasks.sid_history_title = 1.0
  with pytest.raises(Exception, match=r"outside the \d+ scored rows \(tasks \['sid_history_title'\]"):
    sft_loop.pack_splits(config, s)


def test_official_evaluation_prompt_has_its_own_body(tmp_path):
  folder = tiny_llm.write_tiny_llama(str(tmp_path / 'llama'))
  tokenizer = vocab_extension.add_sid_tokens(TextTokenizer.from_hf_directory(folder), 3, 6)
  prompts = llm_tasks.NextSidPrompts(_items(), tokenizer, llm_tasks.OFFICIAL_EVAL, max_items=10)
  text = tokenizer.decode(prompts.ids([[0, 1]])[0])
  assert text.startswith('Below is an instruction')
  assert text.endswith('given the following chronological interaction history: '
                       '<a_0><b_0><c_0>, <a_1><b_1><c_0>\n\n### Response:\n')
  with pytest.raises(Exception, match='unknown wording'):
    llm_tasks.NextSidPrompts(_items(), tokenizer, 'casual', max_items=10)


def test_rl_prompt_pool_and_width_buckets(tmp_path):
  assert rl_prompts.width_buckets(20) == [20]
  assert rl_prompts.width_buckets(100) == [32, 64, 100]
  folder = tiny_llm.write_tiny_llama(str(tmp_path / 'llama'))
  tokenizer = vocab_extension.add_sid_tokens(TextTokenizer.from_hf_directory(folder), 3, 6)
  items = dataclasses.replace(_items(), description=[f"['About {i}']" for i in range(6)])
  rows = [{'history': [0, 1], 'target': 2}, {'history': [3], 'target': 4}]
  sources = ('sid_history', 'item_text', 'title_history')
  pool = rl_prompts.prompt_pool(rows, items, tokenizer, sources=sources, wording='short',
                                max_history=4, num_title_history=1)
  texts = llm_tasks.rl_prompts(rows, items, sources=sources, wording='short',
                               num_title_history=1)
  assert len(pool['target']) == len(texts) == 2 + 12 + 1
  item_text = pool['source'] == 1
  assert (pool['history_len'][item_text] == 0).all()
  np.testing.assert_array_equal(pool['history'][0], [0, 1, -1, -1])
  batch = {k: v[:2] for k, v in pool.items()}  # the two short SID-history prompts
  cut = rl_prompts.bucket_prompts(batch)
  assert cut['tokens'].shape[1] == rl_prompts.width_buckets(pool['tokens'].shape[1])[0]
  want = tokenizer.encode(texts[0].text, add_special_tokens=False)
  np.testing.assert_array_equal(cut['tokens'][0][cut['mask'][0]], want)
  assert cut['positions'][0][cut['mask'][0]].tolist() == list(range(len(want)))


def test_grpo_on_text_prompt_sources(finished_llm_pipeline, tmp_path):
  _, workdir, _ = finished_llm_pipeline
  config = load_config('configs/grpo.py:tiny')
  config.init_from = os.path.join(workdir, 'sft')
  config.grpo.prompt_sources = ('sid_history', 'item_text', 'title_history')
  config.train.steps = 3
  config.mesh.num_devices = 1
  results = grpo_loop.train_and_evaluate(config, str(tmp_path / 'grpo'))
  assert results['test']['examples'] > 0
