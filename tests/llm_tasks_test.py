"""The LLM SFT tasks, their tokenisation and packing, and the RL prompts, on a tiny catalogue.

The tokenizer is a small byte-level BPE trained here, with eos and the catalogue's SID tokens
added, so every check runs in a few seconds without any model file.
"""

import logging

import numpy as np
import pytest
import tokenizers
from tokenizers import pre_tokenizers

from minirec_jax.data import llm_tasks
from minirec_jax.data import sid_sequences
from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable
from minirec_jax.data.text_tokenizer import TextTokenizer

H = ('Below is an instruction that describes a task, paired with an input that provides further '
     'context. Write a response that appropriately completes the request. \n\n### Instruction:\n')
PHRASE = 'office products'
# Items 2 and 3 share a SID (a collision), items 4 and 5 a title.
TITLES = ['Red Stapler', 'Blue Pen (12 pack)', 'Paper Clips', 'Binder Clips', 'Sticky Notes',
          'Sticky Notes', 'Desk Lamp']
SIDS = ['<a_0><b_1><c_2>', '<a_0><b_3><c_1>', '<a_1><b_0><c_0>', '<a_1><b_0><c_0>',
        '<a_2><b_2><c_3>', '<a_2><b_1><c_0>', '<a_3><b_3><c_3>']
DESCRIPTIONS = ["['Staples paper.', 'Red.']", '', "['Bends wire.']", "['Holds 'paper' tight', 'x']",
                "['Yellow.']", "['Yellow.']", '']
ITEMS = ItemTable(title=TITLES, description=DESCRIPTIONS, sid=SIDS)
# User u1's first three rows chain (each history is the chain so far); u2's rows slide.
ROWS = [
    {'user_id': b'u1', 'history': np.array([0]), 'target': 1},
    {'user_id': b'u2', 'history': np.array([6, 4]), 'target': 2},
    {'user_id': b'u1', 'history': np.array([0, 1]), 'target': 6},
    {'user_id': b'u2', 'history': np.array([4, 2]), 'target': 0},
    {'user_id': b'u1', 'history': np.array([0, 1, 6]), 'target': 2},
]


@pytest.fixture(scope='module')
def tokenizer():
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<|im_end|>'], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator([H, 'The user has interacted with items', *TITLES] * 3, trainer)
  sid_tokens = llm_tasks.sid_token_names(SIDS)
  bpe.add_tokens([tokenizers.AddedToken(t, normalized=False) for t in sid_tokens])
  tok = TextTokenizer(bpe, 'tiny-test-tokenizer', eos_token='<|im_end|>')
  tok.require_tokens(sid_tokens)
  return tok


def _all_examples(wording, **kw):
  return {task: llm_tasks.task_examples(task, ROWS, ITEMS, wording=wording, phrase=PHRASE, **kw)
          for task in llm_tasks.TASKS}


def test_official_strings():
  ex = _all_examples('official')
  row = 4  # history 0, 1, 6 -> target 2 (whose SID item 3 shares)
  body = lambda text: f'### User Input: \n{text}\n\n### Response:\n'
  assert ex['next_sid'][row].pieces == (
      (H + 'Can you predict the next possible item that the user may expect?\n\n', False),
      (body('The user has interacted with items <a_0><b_1><c_2>, <a_0><b_3><c_1>, '
            '<a_3><b_3><c_3> in chronological order. Can you predict the next possible item '
            'that the user may expect?'), False),
      ('<a_1><b_0><c_0>\n', True))
  # The SID -> title map keeps the last item of a collided SID: item 3's title, not item 2's.
  assert ex['sid_history_title'][row].pieces == (
      (H + 'Can you recommend the next item for the user based on their interaction history?'
       '\n\n', False),
      (body('The user has sequentially interacted with items <a_0><b_1><c_2>, <a_0><b_3><c_1>, '
            '<a_3><b_3><c_3>. Can you recommend the next item for him? Tell me the title of the '
            'item'), False),
      ('Binder Clips\n', True))
  assert ex['title_history_title'][row].pieces == (
      (H + 'Can you recommend the next item for the user based on their interaction history?'
       '\n \n', False),
      (body('The user has palyed the following office productss before: "Red Stapler",\t'
            '"Blue Pen (12 pack)",\t"Desk Lamp"'), False),
      ('"Paper Clips"\n', True))
  assert ex['title_history_sid'][row].pieces == (
      (H + "Based on the user's historical interaction with item titles, predict the semantic "
       'ID of the next item they may expect.\n\n', False),
      (body('The user has interacted with the following office products items in '
            'chronological order: "Red Stapler", "Blue Pen (12 pack)", "Desk Lamp". Can you '
            'predict the next item the user may expect?'), False),
      ('<a_1><b_0><c_0>\n', True))
  alignment = ex['alignment']
  header = H + 'Answer the question about item identification.\n\n'
  # One SID -> title example per distinct SID (6), one title -> SID per distinct title (6).
  assert len(alignment) == 12
  assert alignment[2].pieces == (
      (header, False), (body('What is the title of item "<a_1><b_0><c_0>"?'), False),
      ('Binder Clips\n', True))
  assert alignment[2].sources == (3,)
  assert alignment[6 + 4].pieces == (
      (header, False), (body('Which item has the title: Sticky Notes?'), False),
      ('<a_2><b_1><c_0>\n', True))
  assert alignment[6 + 4].sources == (5,)


def test_short_strings():
  ex = _all_examples('short')
  sids = '<a_0><b_1><c_2><a_0><b_3><c_1><a_3><b_3><c_3>'
  titles = 'Red Stapler\nBlue Pen (12 pack)\nDesk Lamp\n'
  assert {task: ex[task][4].pieces for task in ex if task != 'alignment'} == {
      'next_sid': ((f'Next item:\n{sids}', False), ('<a_1><b_0><c_0>\n', True)),
      'sid_history_title': ((f'Next title:\n{sids}\n', False), ('Binder Clips\n', True)),
      'title_history_title': ((f'Next title:\n{titles}', False), ('Paper Clips\n', True)),
      'title_history_sid': ((f'Next item:\n{titles}', False), ('<a_1><b_0><c_0>\n', True)),
  }
  assert ex['alignment'][0].pieces == (('Title of item:\n<a_0><b_1><c_2>\n', False),
                                       ('Red Stapler\n', True))
  assert ex['alignment'][6].pieces == (('Item with title:\nRed Stapler\n', False),
                                       ('<a_0><b_1><c_2>\n', True))


@pytest.mark.parametrize('wording', llm_tasks.WORDINGS)
def test_no_answer_inside_a_prompt_and_the_leak_flag(wording):
  for task, examples in _all_examples(wording).items():
    assert examples, task
    for e in examples:
      assert e.response.endswith('\n')
      assert e.response.rstrip('\n') not in e.prompt, (task, e)
  leaked = llm_tasks.task_examples('alignment', ROWS, ITEMS, wording=wording, leak_answer=True)
  for e in leaked:
    assert e.prompt.endswith(e.response.rstrip('\n'))
  with pytest.raises(DataError, match='alignment'):
    llm_tasks.task_examples('next_sid', ROWS, ITEMS, wording=wording, leak_answer=True)


def test_labels_only_on_responses(tokenizer):
  examples = [e for ex in _all_examples('official').values() for e in ex]
  tokenized = llm_tasks.tokenize_examples(examples, tokenizer)
  assert len(tokenized) == len(examples) and not tokenized.truncated.any()
  enc = lambda text: tokenizer.encode(text, add_special_tokens=False)
  for i, e in enumerate(examples):
    tokens, supervised = tokenized.example(i)
    (header, _), (body, _), (response, _) = e.pieces
    expected = enc(header) + enc(body) + enc(response) + [tokenizer.eos_id]
    assert tokens.tolist() == expected
    n = len(enc(response)) + 1
    assert supervised.tolist() == [False] * (len(expected) - n) + [True] * n
    assert tokenizer.decode(tokens[supervised]) == response + '<|im_end|>'


def test_chained_next_sid_is_each_row_exactly(tokenizer):
  rows = llm_tasks.task_examples('next_sid', ROWS, ITEMS, wording='short')
  chains = llm_tasks.task_examples('next_sid', ROWS, ITEMS, wording='short', chain=True)
  assert sorted(r for c in chains for r in c.sources) == list(range(len(ROWS)))
  assert len(chains) == 3  # u1's three rows, u2's two sliding rows apart
  tok_rows = llm_tasks.tokenize_examples(rows, tokenizer)
  tok_chains = llm_tasks.tokenize_examples(chains, tokenizer)
  for c in range(len(chains)):
    tokens, supervised = tok_chains.example(c)
    starts = np.flatnonzero(supervised[:-2])[::3]  # every target SID is 3 tokens
    for start, row in zip(starts, chains[c].sources):
      row_tokens, row_supervised = tok_rows.example(row)
      prompt = row_tokens[~row_supervised]
      # The row's target SID follows exactly the row's prompt.
      assert tokens[:start].tolist() == prompt.tolist()
      assert tokens[start:start + 3].tolist() == row_tokens[len(prompt):len(prompt) + 3].tolist()
    assert tokens[-2:].tolist() == tokenizer.encode('\n') + [tokenizer.eos_id]
  with pytest.raises(DataError, match='short'):
    llm_tasks.task_examples('next_sid', ROWS, ITEMS, wording='official', chain=True)


def _first_fit_reference(lengths, capacity):
  free, bins = [], []
  for length in lengths:
    b = next((b for b, space in enumerate(free) if space >= length), len(free))
    if b == len(free):
      free.append(capacity)
    bins.append(b)
    free[b] -= length
  return bins


def test_packing_round_trip(tokenizer):
  examples = llm_tasks.mixture_examples(ROWS, ITEMS, llm_tasks.TaskMixture(), phrase=PHRASE)
  tokenized = llm_tasks.tokenize_examples(examples, tokenizer)
  seq_len = int(tokenized.lengths.max()) + 7
  packed, stats = llm_tasks.pack_examples(tokenized, seq_len)
  assert isinstance(packed, sid_sequences.PackedSequences)
  assert packed.tokens.shape == (stats.sequences, seq_len) and stats.sequences < len(examples)
  assert stats.tokens == int((packed.segment_ids > 0).sum()) == len(tokenized.tokens)
  recovered = llm_tasks.unpack_examples(packed)
  assert sorted(recovered) == list(range(len(examples)))
  for i, got in recovered.items():
    tokens, supervised = tokenized.example(i)
    np.testing.assert_array_equal(got['tokens'], tokens)
    np.testing.assert_array_equal(got['supervised'], supervised)
    np.testing.assert_array_equal(got['positions'], np.arange(len(tokens)))
  # Labels are each segment's next token; weights sit exactly on response predictions.
  for b in range(len(packed)):
    seg = packed.segment_ids[b]
    same_next = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
    np.testing.assert_array_equal(packed.labels[b, :-1][same_next], packed.tokens[b, 1:][same_next])
    assert not packed.weights[b, :-1][~same_next].any() and not packed.weights[b, -1]
  # Every response token is predicted (no example starts with one: none was truncated).
  assert packed.weights.sum() == tokenized.supervised.sum()
  # Segments are the first-fit bins of the examples, in order.
  lengths = tokenized.lengths
  bins = _first_fit_reference(lengths.tolist(), seq_len)
  rows = {i: b for b in range(len(packed)) for i in np.unique(packed.rows[b]) if i >= 0}
  assert [rows[i] for i in range(len(examples))] == bins


def test_first_fit_matches_the_plain_algorithm():
  lengths = np.random.default_rng(0).integers(1, 60, 500)
  bins, starts = llm_tasks._first_fit(lengths, 64)  # pylint: disable=protected-access
  assert bins.tolist() == _first_fit_reference(lengths.tolist(), 64)
  for b in np.unique(bins):
    order = np.argsort(starts[bins == b])
    ends = np.cumsum(lengths[bins == b][order])
    np.testing.assert_array_equal(starts[bins == b][order], np.concatenate([[0], ends[:-1]]))
    assert ends[-1] <= 64


def test_truncation_is_counted(tokenizer, caplog):
  examples = llm_tasks.task_examples('title_history_sid', ROWS, ITEMS, phrase=PHRASE)
  full = llm_tasks.tokenize_examples(examples, tokenizer, cutoff_len=None)
  cutoff = int(full.lengths.min()) + 2
  with caplog.at_level(logging.WARNING):
    cut = llm_tasks.tokenize_examples(examples, tokenizer, cutoff_len=cutoff)
  assert 'lost' in caplog.text
  assert (cut.lengths == np.minimum(full.lengths, cutoff)).all()
  np.testing.assert_array_equal(cut.truncated, full.lengths - cut.lengths)
  for i in range(len(examples)):
    np.testing.assert_array_equal(cut.example(i)[0], full.example(i)[0][-cutoff:])
  counts = llm_tasks.token_counts(cut)['title_history_sid']
  assert counts['truncated_examples'] == int((full.lengths > cutoff).sum()) > 0
  assert counts['tokens_cut'] == int(cut.truncated.sum())
  # Packing refuses an example longer than the sequence, naming it, unless asked to cut.
  seq_len = int(full.lengths.max()) - 1
  with pytest.raises(DataError, match=r'example \d+ \(task title_history_sid'):
    llm_tasks.pack_examples(full, seq_len)
  packed, stats = llm_tasks.pack_examples(full, seq_len, cut_long=True)
  assert stats.cut_examples == int((full.lengths > seq_len).sum()) > 0
  assert stats.tokens_cut == int(np.maximum(full.lengths - seq_len, 0).sum())
  assert len(llm_tasks.unpack_examples(packed)) == len(examples)


def test_token_counts(tokenizer):
  mixture = llm_tasks.TaskMixture(wording='short')
  examples = llm_tasks.mixture_examples(ROWS, ITEMS, mixture)
  tokenized = llm_tasks.tokenize_examples(examples, tokenizer)
  counts = llm_tasks.token_counts(tokenized)
  assert list(counts) == list(llm_tasks.TASKS) + ['epoch']
  for task in llm_tasks.TASKS:
    mine = [i for i, e in enumerate(examples) if e.task == task]
    assert counts[task]['examples'] == len(mine)
    assert counts[task]['tokens'] == sum(len(tokenized.example(i)[0]) for i in mine)
    assert counts[task]['response_tokens'] == sum(
        len(tokenizer.encode(examples[i].response)) + 1 for i in mine)
  for key in counts['epoch']:
    assert counts['epoch'][key] == sum(counts[t][key] for t in llm_tasks.TASKS)
  assert counts['epoch']['tokens'] == len(tokenized.tokens)


def test_mixture_weights():
  base = llm_tasks.mixture_examples(ROWS, ITEMS, llm_tasks.TaskMixture(), phrase=PHRASE)
  assert len(base) == 4 * len(ROWS) + 12
  mixture = llm_tasks.TaskMixture(next_sid=2.0, alignment=0.5, sid_history_title=0.0, seed=3)
  mixed = llm_tasks.mixture_examples(ROWS, ITEMS, mixture, phrase=PHRASE)
  per_task = {t: sum(e.task == t for e in mixed) for t in llm_tasks.TASKS}
  assert per_task == {'next_sid': 10, 'alignment': 6, 'sid_history_title': 0,
                      'title_history_title': 5, 'title_history_sid': 5}
  assert mixed == llm_tasks.mixture_examples(ROWS, ITEMS, mixture, phrase=PHRASE)
  with pytest.raises(DataError, match='tasks.alignment'):
    llm_tasks.TaskMixture(alignment=-1).weights()


def test_rl_prompts():
  body = lambda text: f'### User Input: \n{text}\n\n### Response:\n'
  prompts = llm_tasks.rl_prompts(ROWS, ITEMS, num_title_history=3, seed=0)
  by_source = {s: [p for p in prompts if p.source == s] for s in llm_tasks.RL_SOURCES}
  assert [p.origin for p in by_source['sid_history']] == list(range(len(ROWS)))
  assert by_source['sid_history'][1].text == body(
      'The user has interacted with items <a_3><b_3><c_3>, <a_2><b_2><c_3> in chronological '
      'order. Can you predict the next possible item that the user may expect?')
  assert by_source['sid_history'][1].target == '<a_1><b_0><c_0>'
  item_text = by_source['item_text']
  # 6 distinct titles, then distinct first description elements ('' included; 'Yellow.' twice).
  assert [p.text for p in item_text[:2]] == [body('Which item has the title: Red Stapler?'),
                                             body('Which item has the title: Blue Pen (12 pack)?')]
  descriptions = [p.text for p in item_text[6:]]
  assert descriptions == [body(f'An item can be described as follows: "{d}". Which item is it '
                               'describing?')
                          for d in ('Staples paper.', '', 'Bends wire.', "Holds 'paper' tight",
                                    'Yellow.')]
  assert [p.item for p in item_text[6:]] == [0, 6, 2, 3, 5]
  drawn = np.random.RandomState(0).choice(len(ROWS), 3, replace=False).tolist()
  title_history = by_source['title_history']
  assert [p.origin for p in title_history] == drawn
  assert title_history[0].text == body(
      'Given the title sequence of user historical interactive items: '
      + ', '.join(f'"{TITLES[i]}"' for i in ROWS[drawn[0]]['history'])
      + ', can you recommend a suitable next item for the user?')
  for p in prompts:
    assert not p.text.startswith('Below') and not p.text.endswith(p.target)
  leaked = llm_tasks.rl_prompts(ROWS, ITEMS, sources=['item_text'], leak_answer=True)
  assert all(p.text.endswith(p.target) for p in leaked)
  short = llm_tasks.rl_prompts(ROWS, ITEMS, sources=['sid_history'], wording='short')
  assert short[0].text == 'Next item:\n<a_0><b_1><c_2>'


def test_rl_prompt_tokens_are_cut_and_counted(tokenizer):
  prompts = llm_tasks.rl_prompts(ROWS, ITEMS, sources=['sid_history'])
  full, none_cut = llm_tasks.tokenize_rl_prompts(prompts, tokenizer, max_len=10_000)
  ids, cut = llm_tasks.tokenize_rl_prompts(prompts, tokenizer, max_len=20)
  assert none_cut == 0 and cut == sum(len(f) > 20 for f in full) > 0
  for f, i in zip(full, ids):
    np.testing.assert_array_equal(i, f[-20:])


def test_first_description():
  assert llm_tasks.first_description("['a b', 'c']") == 'a b'
  assert llm_tasks.first_description('') == llm_tasks.first_description('[]') == ''
  assert llm_tasks.first_description("['it's broken', 'x']") == "it's broken"


def test_bad_input_names_the_item_or_row():
  no_sid = ItemTable(title=TITLES, description=DESCRIPTIONS, sid=SIDS[:2] + [''] + SIDS[3:])
  with pytest.raises(DataError, match="sid of item 2"):
    llm_tasks.task_examples('next_sid', ROWS, no_sid, where='train split')
  bad_rows = ROWS[:1] + [{'user_id': b'u3', 'history': np.array([1, 9]), 'target': 0}]
  with pytest.raises(DataError, match="train split: field 'row 1 history' = 9"):
    llm_tasks.task_examples('next_sid', bad_rows, ITEMS, where='train split')
  no_sids = ItemTable(title=TITLES, description=DESCRIPTIONS, sid=[''] * len(TITLES))
  assert len(llm_tasks.task_examples('title_history_title', ROWS, no_sids, phrase=PHRASE)) == 5
  with pytest.raises(DataError, match='category phrase'):
    llm_tasks.task_examples('title_history_sid', ROWS, ITEMS)
  with pytest.raises(DataError, match='unknown task'):
    llm_tasks.task_examples('next_title', ROWS, ITEMS)


def test_sid_strings():
  assert llm_tasks.sid_strings([[1, 20, 3], [0, 0, 255]]) == ['<a_1><b_20><c_3>',
                                                              '<a_0><b_0><c_255>']
  assert llm_tasks.sid_token_names(['<a_10><b_2>', '<a_2><b_2>']) == ['<a_10>', '<a_2>', '<b_2>']
