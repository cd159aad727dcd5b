"""MiniOneRec's SFT tasks and RL prompts as text for a pretrained language model, tokenised with
that model's tokenizer and packed exactly into fixed-length training sequences.

Owns: the five SFT tasks as (prompt, response) text examples built from a split's rows, the item
titles and the SID strings; the task mixture; piecewise tokenisation with loss weights on the
response only; exact first-fit packing into `sid_sequences.PackedSequences` (the arrays the SFT
step reads); the RL prompts; token counts for sizing runs.

Tasks (`TASKS`; "row" tasks give one example per split row, oldest history item first):
  next_sid             row: SID history -> next SID.
  alignment            per catalogue item: SID -> title and title -> SID. The SID -> title
                       examples are keyed by SID and the title -> SID ones by title, the last
                       item (by id) winning a key, as the official dicts do: collided SIDs and
                       duplicate titles give one example per distinct key (Industrial: 3,670 +
                       3,646).
  sid_history_title    row: SID history -> next item's title, the title looked up through the
                       same SID -> title map (for a collided SID, the last item's title).
  title_history_title  row: title history -> next item's own title.
  title_history_sid    row: title history -> next item's own SID.

Wordings (`WORDINGS`):
  official  the exact strings of the official code: header H(instruction) and body B(input)
            tokenised as separate pieces, the response "{answer}\\n". The official
            title_history_title task (D3-style) draws one of 11 instructions per example with
            a seeded random.randint (several mention gaming); their texts are not known here, so
            every example uses sid_history_title's instruction. Everything else of that task is
            as the official code writes it: the header ending "\\n \\n", "palyed", the category
            phrase followed by "s", titles quoted and joined by ",\\t", the quoted answer. The
            category phrase is substituted as given ("industrial and scientific items" gives
            "...itemss" in task 4 and "...items items" in task 5, as the official text reads).
  short     one prompt piece: a one-line instruction, then the history (SIDs written back to
            back, titles one per line); the response follows directly. With `chain=True` the
            next_sid rows of one user are chained as `sid_sequences` chains them: one example
            per chain whose every target SID is supervised with exactly its row's prompt
            before it (segment-causal attention), so history tokens are not repeated. The
            closing "\\n" and eos are then trained once per chain, after its last target.

The official code's alignment prompts carry the answer (`generate_prompt` appends it after
"### Response:\\n"); here no response is inside its prompt unless `leak_answer=True`, which
appends the answer (without its final "\\n") to the prompt the same way, for parity studies.

Tokenisation (`tokenize_examples`): every piece is encoded on its own without special tokens and
the pieces are concatenated, then eos is appended (ids = enc(H) + enc(B) + enc(response) + [eos]);
loss weights fall on the response tokens and eos. Examples longer than `cutoff_len` lose tokens
on the left; the count is kept and logged. Packing (`pack_examples`) places whole examples
first-fit into sequences with positions restarting at 0 and segment-causal attention per
example, so each example is computed exactly as if it were alone.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from minirec_jax.data import sid_sequences
from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable
from minirec_jax.data.text_tokenizer import TextTokenizer

TASKS = ('next_sid', 'alignment', 'sid_history_title', 'title_history_title',
         'title_history_sid')
WORDINGS = ('official', 'short')
RL_SOURCES = ('sid_history', 'item_text', 'title_history')
CATEGORY_PHRASES = {'Industrial_and_Scientific': 'industrial and scientific items',
                    'Office_Products': 'office products'}

# Official strings.
_PREAMBLE = ('Below is an instruction that describes a task, paired with an input that provides '
             'further context. Write a response that appropriately completes the request. \n\n'
             '### Instruction:\n')
_NEXT_SID_INSTRUCTION = 'Can you predict the next possible item that the user may expect?'
_ALIGNMENT_INSTRUCTION = 'Answer the question about item identification.'
_NEXT_TITLE_INSTRUCTION = ('Can you recommend the next item for the user based on their '
                           'interaction history?')
_TITLE_TO_SID_INSTRUCTION = ("Based on the user's historical interaction with item titles, "
                             'predict the semantic ID of the next item they may expect.')

# Short strings (our own): one instruction line, then the history.
_SHORT = {
    'next_sid': 'Next item:\n',
    'sid_to_title': 'Title of item:\n',
    'title_to_sid': 'Item with title:\n',
    'description_to_sid': 'Item described as:\n',
    'next_title': 'Next title:\n',
}

_SID_TOKEN = re.compile(r'<[^<>]+>')


def official_header(instruction: str, stray_space: bool = False) -> str:
  """H(instruction); `stray_space` ends it "\\n \\n" as title_history_title's header does."""
  return _PREAMBLE + instruction + ('\n \n' if stray_space else '\n\n')


def official_body(user_input: str) -> str:
  """B(input): the user-input block that ends where the response starts."""
  return f'### User Input: \n{user_input}\n\n### Response:\n'


def category_phrase(category: str) -> str:
  """The official prompts' phrase for a dataset category (e.g. Office_Products)."""
  if category not in CATEGORY_PHRASES:
    raise DataError(f'no category phrase for this category (known: {sorted(CATEGORY_PHRASES)}); '
                    'pass a phrase explicitly', field='category', value=category)
  return CATEGORY_PHRASES[category]


def sid_strings(codes) -> list[str]:
  """Codes `[num_items, L]` -> SID strings '<a_c0><b_c1>...' (the official token names)."""
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise DataError(f'codes must be [num_items, levels], got shape {codes.shape}', field='codes')
  return [''.join(sid_sequences.sid_token_name(level, code) for level, code in enumerate(row))
          for row in codes.tolist()]


def sid_token_names(sids: Sequence[str]) -> list[str]:
  """The distinct SID tokens of SID strings, sorted as strings (the official vocabulary order)."""
  return sorted({t for sid in sids for t in _SID_TOKEN.findall(sid)})


@dataclasses.dataclass(frozen=True)
class Example:
  """One SFT example as text pieces, each tokenised on its own.

  task: one of TASKS.
  pieces: (text, supervised) in order; the response pieces are supervised (eos follows them).
  sources: per supervised piece, the split row (row tasks) or item id (alignment) it teaches.
  """

  task: str
  pieces: tuple[tuple[str, bool], ...]
  sources: tuple[int, ...]

  @property
  def prompt(self) -> str:
    """The text before the first response piece."""
    text = []
    for piece, supervised in self.pieces:
      if supervised:
        break
      text.append(piece)
    return ''.join(text)

  @property
  def response(self) -> str:
    """The text of the first response piece (the only one, unless the example is a chain)."""
    return next(piece for piece, supervised in self.pieces if supervised)


class _Catalogue:
  """Checked access to the titles and SIDs of an item table, with the official dicts."""

  def __init__(self, items: ItemTable, where: str):
    self.items = items
    self.where = where
    # Keyed dicts as the official code builds them: insertion order of a key's first item,
    # value of its last item.
    self.sid_to_item: dict[str, int] = {}
    self.title_to_item: dict[str, int] = {}
    for item, (sid, title) in enumerate(zip(items.sid, items.title)):
      if sid:
        self.sid_to_item[sid] = item
      self.title_to_item[title] = item

  def sid(self, item: int) -> str:
    sid = self.items.sid[item]
    if not sid:
      raise DataError('item has no SID string; give the table SIDs (llm_tasks.sid_strings)',
                      path=self.where, field=f'sid of item {item}', value=sid, has_value=True)
    return sid

  def title(self, item: int) -> str:
    return self.items.title[item]

  def title_of_sid(self, item: int) -> str:
    """The title the official SID -> title dict gives for the item's SID."""
    return self.items.title[self.sid_to_item[self.sid(item)]]


def _checked_rows(rows: Sequence[Mapping], num_items: int, where: str
                  ) -> list[tuple[list[int], int]]:
  out = []
  for r, row in enumerate(rows):
    history = [int(i) for i in row['history']]
    target = int(row['target'])
    if not history:
      raise DataError('empty history', path=where, field=f'row {r} history', value=history)
    for field, ids in (('history', history), ('target', [target])):
      bad = [i for i in ids if not 0 <= i < num_items]
      if bad:
        raise DataError(f'item id outside the catalogue of {num_items}', path=where,
                        field=f'row {r} {field}', value=bad[0])
    out.append((history, target))
  return out


def _official_example(task: str, instruction: str, user_input: str, answer: str, source: int,
                      leak: bool = False, stray_space: bool = False) -> Example:
  body = official_body(user_input) + (answer if leak else '')
  return Example(task, ((official_header(instruction, stray_space), False), (body, False),
                        (answer + '\n', True)), (source,))


def _short_example(task: str, prompt: str, answer: str, source: int,
                   leak: bool = False) -> Example:
  return Example(task, ((prompt + (answer if leak else ''), False), (answer + '\n', True)),
                 (source,))


def _quoted(titles: Sequence[str], separator: str) -> str:
  return separator.join(f'"{t}"' for t in titles)


def _alignment_examples(cat: _Catalogue, wording: str, leak: bool) -> list[Example]:
  # (official input, short prompt, answer, item): SID -> title per SID, title -> SID per title.
  questions = [(f'What is the title of item "{sid}"?', f"{_SHORT['sid_to_title']}{sid}\n",
                cat.title(item), item) for sid, item in cat.sid_to_item.items()]
  questions += [(f'Which item has the title: {title}?', f"{_SHORT['title_to_sid']}{title}\n",
                 cat.sid(item), item) for title, item in cat.title_to_item.items()]
  if wording == 'official':
    return [_official_example('alignment', _ALIGNMENT_INSTRUCTION, question, answer, item, leak)
            for question, _, answer, item in questions]
  return [_short_example('alignment', prompt, answer, item, leak)
          for _, prompt, answer, item in questions]


def _row_example(task: str, cat: _Catalogue, history: list[int], target: int, row: int,
                 wording: str, phrase: str) -> Example:
  # Only what a task shows is looked up (a title-only task needs no SIDs).
  sid_history = task in ('next_sid', 'sid_history_title')
  shown = [cat.sid(i) if sid_history else cat.title(i) for i in history]
  if task in ('next_sid', 'title_history_sid'):
    answer = cat.sid(target)
  else:
    answer = cat.title_of_sid(target) if task == 'sid_history_title' else cat.title(target)
  if task == 'next_sid':
    return Example(task, tuple((piece, False) for piece in next_sid_prompt(shown, wording))
                   + ((answer + '\n', True),), (row,))
  if wording == 'short':
    instruction = _SHORT['next_sid' if task == 'title_history_sid' else 'next_title']
    text = ''.join(shown) if sid_history else ''.join(t + '\n' for t in shown)
    # A SID history asked for a title ends its line; next_sid's answer follows it directly.
    return _short_example(task, instruction + text + ('\n' if task == 'sid_history_title' else ''),
                          answer, row)
  if task == 'sid_history_title':
    user_input = (f'The user has sequentially interacted with items {", ".join(shown)}. Can you '
                  'recommend the next item for him? Tell me the title of the item')
    return _official_example(task, _NEXT_TITLE_INSTRUCTION, user_input, answer, row)
  if task == 'title_history_title':
    user_input = f'The user has palyed the following {phrase}s before: ' + _quoted(shown, ',\t')
    return _official_example(task, _NEXT_TITLE_INSTRUCTION, user_input, f'"{answer}"', row,
                             stray_space=True)
  user_input = (f'The user has interacted with the following {phrase} items in chronological '
                f'order: {_quoted(shown, ", ")}. Can you predict the next item the user may '
                'expect?')
  return _official_example(task, _TITLE_TO_SID_INSTRUCTION, user_input, answer, row)


def next_sid_input(history_sids: Sequence[str]) -> str:
  """The official next-SID input text (SFT task 1 and the RL SID-history prompts)."""
  return (f'The user has interacted with items {", ".join(history_sids)} in chronological '
          'order. Can you predict the next possible item that the user may expect?')


# The official evaluation asks with another body than its SFT task (reference section 7).
OFFICIAL_EVAL = 'official_eval'
_EVAL_INPUT = ('Can you predict the next possible item the user may expect, given the following '
               'chronological interaction history: ')


def next_sid_prompt(history_sids: Sequence[str], wording: str) -> tuple[str, ...]:
  """Task next_sid's prompt as the text pieces that are encoded one by one; wording
  OFFICIAL_EVAL gives the official evaluation's prompt (same header, its own body)."""
  if wording == 'short':
    return (_SHORT['next_sid'] + ''.join(history_sids),)
  if wording == OFFICIAL_EVAL:
    body = official_body(_EVAL_INPUT + ', '.join(history_sids))
  else:
    body = official_body(next_sid_input(history_sids))
  return (official_header(_NEXT_SID_INSTRUCTION), body)


@dataclasses.dataclass(eq=False)
class NextSidPrompts:
  """Left-padded next-SID prompts of a language model, token for token the training prompt of
  task next_sid in `wording` (a chained short example's prompt too: its SIDs follow one
  another, so every target sees the same tokens as here), or with OFFICIAL_EVAL the official
  evaluation's prompt (e.g. to check an official checkpoint as its authors evaluated it).

  `__call__(history [batch, H], history_len [batch])` -> tokens, positions, mask
  `[batch, width]` (`sid_sequences.left_pad`) of each history's last `max_items` items. SID
  tokens are atomic and the separators fixed, so a prompt's length depends only on its number
  of items: `width`, the length with `max_items` items, fits every prompt, and a jitted
  decoder sees one prompt shape.
  """

  items: ItemTable
  tokenizer: TextTokenizer
  wording: str
  max_items: int

  def __post_init__(self):
    if self.wording not in WORDINGS + (OFFICIAL_EVAL,):
      raise DataError(f'unknown wording (known: {WORDINGS + (OFFICIAL_EVAL,)})',
                      field='wording', value=self.wording)
    self._catalogue = _Catalogue(self.items, 'next-SID prompts')
    self.width = len(self.ids([[0] * self.max_items])[0])

  def ids(self, histories: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """int32 prompt token ids per history (item ids, oldest first)."""
    prompts = [next_sid_prompt([self._catalogue.sid(int(i)) for i in h], self.wording)
               for h in histories]
    texts = list({piece: None for prompt in prompts for piece in prompt})
    encoded = dict(zip(texts, self.tokenizer.encode_batch(texts, add_special_tokens=False)))
    return [np.asarray([t for piece in prompt for t in encoded[piece]], np.int32)
            for prompt in prompts]

  def __call__(self, history: np.ndarray, history_len: np.ndarray) -> dict[str, np.ndarray]:
    return sid_sequences.left_pad(
        self.ids(sid_sequences.recent_items(history, history_len, self.max_items)), self.width)


def _chained_next_sid(cat: _Catalogue, rows: Sequence[Mapping],
                      checked: list[tuple[list[int], int]]) -> list[Example]:
  users = [row['user_id'] for row in rows]
  segments = sid_sequences.build_segments(users, [h for h, _ in checked],
                                          [t for _, t in checked],
                                          max(len(h) for h, _ in checked))
  out = []
  for seg in segments:
    prompt = _SHORT['next_sid'] + ''.join(cat.sid(i) for i in seg.items[:seg.first_target])
    targets = [(cat.sid(i), True) for i in seg.items[seg.first_target:]]
    targets[-1] = (targets[-1][0] + '\n', True)
    out.append(Example('next_sid', ((prompt, False), *targets), seg.rows))
  return out


def task_examples(task: str, rows: Sequence[Mapping], items: ItemTable, *,
                  wording: str = 'official', phrase: str = '', leak_answer: bool = False,
                  chain: bool = False, where: str = 'rows') -> list[Example]:
  """The examples of one task.

  Args:
    task: one of TASKS.
    rows: the split's examples, each {'history': item ids (oldest first), 'target': item id,
      'user_id' (needed by `chain`)}; unused by 'alignment'.
    items: titles and SID strings by item id (`dataclasses.replace(items, sid=sid_strings(c))`
      for SIDs of one's own).
    wording: one of WORDINGS.
    phrase: the official category phrase (`category_phrase`), for the title-history tasks.
    leak_answer: 'alignment' only: reproduce the official answer leak.
    chain: 'next_sid' in the short wording only: one example per chain of a user's rows.
    where: names the rows in errors (e.g. 'industrial train split').
  Returns:
    Examples in row (or catalogue) order; rows keep their order inside a chain.
  """
  if task not in TASKS:
    raise DataError(f'unknown task (known: {TASKS})', field='task', value=task)
  if wording not in WORDINGS:
    raise DataError(f'unknown wording (known: {WORDINGS})', field='wording', value=wording)
  if leak_answer and task != 'alignment':
    raise DataError('only the alignment task has the answer leak', field='task', value=task)
  if chain and (task, wording) != ('next_sid', 'short'):
    raise DataError("chaining needs a prompt that ends with the history: task 'next_sid' in "
                    "the short wording", field='task', value=(task, wording))
  if (wording == 'official' and task in ('title_history_title', 'title_history_sid')
      and not phrase):
    raise DataError('the official title-history prompts need the category phrase',
                    field='phrase', value=phrase, has_value=True)
  cat = _Catalogue(items, where)
  if task == 'alignment':
    return _alignment_examples(cat, wording, leak_answer)
  checked = _checked_rows(rows, items.num_items, where)
  if chain:
    return _chained_next_sid(cat, rows, checked) if checked else []
  return [_row_example(task, cat, history, target, r, wording, phrase)
          for r, (history, target) in enumerate(checked)]


@dataclasses.dataclass
class TaskMixture:
  """Which SFT tasks an epoch holds and how much of each; plain fields so a config can fill it.

  A task's weight w >= 0 takes every example floor(w) times plus a seeded random
  (w - floor(w)) share of them once more (0.25: a quarter; 2: each twice). The mixture is then
  shuffled with the seed (the official code concatenates all five tasks, weight 1 each, and
  shuffles with seed 42; HF's shuffle order itself is not reproduced).
  """

  wording: str = 'official'
  next_sid: float = 1.0
  alignment: float = 1.0
  sid_history_title: float = 1.0
  title_history_title: float = 1.0
  title_history_sid: float = 1.0
  seed: int = 42
  leak_alignment_answer: bool = False
  chain_next_sid: bool = False

  def weights(self) -> dict[str, float]:
    out = {task: float(getattr(self, task)) for task in TASKS}
    for task, weight in out.items():
      if not weight >= 0:
        raise DataError('task weights must be >= 0', field=f'tasks.{task}', value=weight)
    return out


def mixture_examples(rows: Sequence[Mapping], items: ItemTable, mixture: TaskMixture, *,
                     phrase: str = '', where: str = 'rows') -> list[Example]:
  """The shuffled examples of one epoch of `mixture` (see `task_examples` for the arguments)."""
  out = []
  for index, (task, weight) in enumerate(mixture.weights().items()):
    if weight == 0:
      continue
    examples = task_examples(
        task, rows, items, wording=mixture.wording, phrase=phrase, where=where,
        leak_answer=mixture.leak_alignment_answer and task == 'alignment',
        chain=mixture.chain_next_sid and task == 'next_sid')
    whole, part = divmod(weight, 1.0)
    out.extend(examples * int(whole))
    if part:
      rng = np.random.default_rng([mixture.seed, index])
      chosen = rng.choice(len(examples), int(round(part * len(examples))), replace=False)
      out.extend(examples[i] for i in np.sort(chosen))
  order = np.random.default_rng(mixture.seed).permutation(len(out))
  return [out[i] for i in order]


@dataclasses.dataclass(frozen=True)
class TokenizedExamples:
  """Examples as token ids, flat: example i is `tokens[offsets[i]:offsets[i + 1]]`.

  tokens:     int32 [total]
  supervised: bool [total], True on response tokens (eos included): the tokens the loss predicts
  offsets:    int64 [n + 1]
  truncated:  int32 [n], tokens cut from the left of each example
  tasks, sources: per example, from `Example`
  """

  tokens: np.ndarray
  supervised: np.ndarray
  offsets: np.ndarray
  truncated: np.ndarray
  tasks: tuple[str, ...]
  sources: tuple[tuple[int, ...], ...]

  def __len__(self) -> int:
    return len(self.tasks)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, supervised) of example i."""
    span = slice(self.offsets[i], self.offsets[i + 1])
    return self.tokens[span], self.supervised[span]

  def cut_left(self, max_len: int) -> TokenizedExamples:
    """Keeps the last `max_len` tokens of every example (cuts added to `truncated`)."""
    lengths = self.lengths
    cut = np.maximum(lengths - max_len, 0)
    if not cut.any():
      return self
    keep = np.ones(len(self.tokens), bool)
    for i in np.flatnonzero(cut):
      keep[self.offsets[i]:self.offsets[i] + cut[i]] = False
    offsets = np.concatenate([[0], np.cumsum(lengths - cut)]).astype(np.int64)
    return dataclasses.replace(self, tokens=self.tokens[keep], supervised=self.supervised[keep],
                               offsets=offsets,
                               truncated=(self.truncated + cut).astype(np.int32))


def _report_cut(before: TokenizedExamples, after: TokenizedExamples, what: str) -> None:
  cut = after.truncated - before.truncated
  if cut.any():
    first = int(np.flatnonzero(cut)[0])
    logging.warning('%s: %d of %d examples lost %d tokens on the left (first: example %d, task '
                    '%s, sources %s)', what, int((cut > 0).sum()), len(after), int(cut.sum()),
                    first, after.tasks[first], after.sources[first])


def tokenize_examples(examples: Sequence[Example], tokenizer: TextTokenizer,
                      cutoff_len: int | None = 512) -> TokenizedExamples:
  """Piecewise token ids and response masks; eos after the last piece; left-truncation to
  `cutoff_len` (None: none), counted in `truncated` and logged.

  The tokenizer must know the SID tokens as added tokens (`TextTokenizer.require_tokens` on
  `sid_token_names`), or SID strings would be split into pieces of text.
  """
  if cutoff_len is not None and cutoff_len < 1:
    raise DataError('cutoff_len must be >= 1 (or None)', field='cutoff_len', value=cutoff_len)
  eos = tokenizer.eos_id
  if eos is None:
    raise DataError('the tokenizer has no eos token; every response ends with it',
                    path=tokenizer.source, field='eos_token', value=tokenizer.eos_token,
                    has_value=True)
  # Headers, instructions and answers repeat: encode each distinct piece once.
  texts = list({piece: None for e in examples for piece, _ in e.pieces})
  encoded = dict(zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False)))
  tokens, supervised, lengths = [], [], []
  for example in examples:
    ids, mask = [], []
    for piece, is_response in example.pieces:
      ids.extend(encoded[piece])
      mask.extend([is_response] * len(encoded[piece]))
    ids.append(eos)
    mask.append(True)
    tokens.extend(ids)
    supervised.extend(mask)
    lengths.append(len(ids))
  full = TokenizedExamples(
      tokens=np.asarray(tokens, np.int32), supervised=np.asarray(supervised, bool),
      offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
      truncated=np.zeros(len(examples), np.int32), tasks=tuple(e.task for e in examples),
      sources=tuple(e.sources for e in examples))
  if cutoff_len is None:
    return full
  cut = full.cut_left(cutoff_len)
  _report_cut(full, cut, f'cutoff_len {cutoff_len}')
  return cut


def check_targets_within(tokenized: TokenizedExamples, rows: Sequence[int], what: str) -> None:
  """Raises DataError when a supervised token is not among `rows` (e.g. a title answer under a
  head that scores SID rows only), naming the first such example, its task and the token."""
  outside = tokenized.supervised & ~np.isin(tokenized.tokens, np.asarray(rows))
  if outside.any():
    where = np.flatnonzero(outside)
    example = np.searchsorted(tokenized.offsets, where, side='right') - 1
    i = int(example[0])
    tasks = sorted({tokenized.tasks[j] for j in np.unique(example)})
    raise DataError(f'{what}: {int(outside.sum())} supervised tokens lie outside the '
                    f'{len(rows)} scored rows (tasks {tasks}; first: example {i}, task '
                    f'{tokenized.tasks[i]}); such targets need the full vocabulary',
                    field='token_id', value=int(tokenized.tokens[where[0]]))


def token_counts(tokenized: TokenizedExamples) -> dict[str, dict[str, int]]:
  """Per task and for the whole epoch ('epoch'): examples, tokens, response tokens (the
  supervised ones, eos included), truncated examples and tokens cut."""
  lengths = tokenized.lengths
  response = np.add.reduceat(tokenized.supervised.astype(np.int64), tokenized.offsets[:-1]
                             ) if len(tokenized) else np.zeros(0, np.int64)
  tasks = np.asarray(tokenized.tasks)
  out = {}
  for name in [t for t in TASKS if t in set(tokenized.tasks)] + ['epoch']:
    sel = np.ones(len(tasks), bool) if name == 'epoch' else tasks == name
    out[name] = {'examples': int(sel.sum()), 'tokens': int(lengths[sel].sum()),
                 'response_tokens': int(response[sel].sum()),
                 'truncated_examples': int((tokenized.truncated[sel] > 0).sum()),
                 'tokens_cut': int(tokenized.truncated[sel].sum())}
  return out


@dataclasses.dataclass(frozen=True)
class PackStats:
  """sequences: packed sequences; occupancy: token slots used / all slots; cut_examples,
  tokens_cut: examples left-truncated to fit `seq_len` (with `cut_long`)."""

  sequences: int
  examples: int
  tokens: int
  occupancy: float
  cut_examples: int
  tokens_cut: int


def _first_fit(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
  """(bin, start) of each length placed first-fit into bins of `capacity`.

  A max-tree over the free space of every possible bin finds the leftmost bin with room in
  O(log n); unopened bins are empty, so the leftmost of them is the next new bin.
  """
  n = len(lengths)
  size = 1 << max(0, (n - 1).bit_length())
  tree = [capacity] * (2 * size)
  bins = np.empty(n, np.int64)
  starts = np.empty(n, np.int64)
  for i, length in enumerate(lengths.tolist()):
    node = 1
    while node < size:
      node = 2 * node if tree[2 * node] >= length else 2 * node + 1
    bins[i] = node - size
    starts[i] = capacity - tree[node]
    tree[node] -= length
    node //= 2
    while node:
      tree[node] = max(tree[2 * node], tree[2 * node + 1])
      node //= 2
  return bins, starts


def pack_examples(tokenized: TokenizedExamples, seq_len: int, cut_long: bool = False
                  ) -> tuple[sid_sequences.PackedSequences, PackStats]:
  """First-fit packs whole examples into sequences of `seq_len` tokens.

  Returns `sid_sequences.PackedSequences` (every array `[num_sequences, seq_len]`): tokens
  (0 in unused slots), positions (restarting at 0 in every example), segment_ids (1-based per
  example within its sequence, 0 unused), labels (the example's next token), weights (1.0 where
  that next token is a response token), rows (the example's index where weights is 1, else -1).

  Raises:
    DataError: an example longer than `seq_len`, naming it, unless `cut_long`, which keeps its
      last `seq_len` tokens and counts the cut in the returned stats.
  """
  if seq_len < 1:
    raise DataError('seq_len must be >= 1', field='seq_len', value=seq_len)
  lengths = tokenized.lengths
  too_long = np.flatnonzero(lengths > seq_len)
  if too_long.size and not cut_long:
    i = int(too_long[0])
    raise DataError(f'{too_long.size} examples are longer than seq_len; the first is example '
                    f'{i} (task {tokenized.tasks[i]}, sources {tokenized.sources[i]}) of '
                    f'{lengths[i]} tokens; raise seq_len, lower the cutoff or pass cut_long',
                    field='seq_len', value=seq_len)
  packed_from = tokenized.cut_left(seq_len)
  _report_cut(tokenized, packed_from, f'seq_len {seq_len}')
  lengths = packed_from.lengths
  bins, starts = _first_fit(lengths, seq_len)
  num_bins = int(bins.max()) + 1 if len(lengths) else 0
  # Segment id = rank of the example among its bin's examples (they arrive in start order).
  order = np.lexsort((starts, bins))
  slots = np.empty(len(lengths), np.int64)
  first_of_bin = np.searchsorted(bins[order], bins[order])
  slots[order] = np.arange(len(order)) - first_of_bin + 1
  owner = np.repeat(np.arange(len(lengths)), lengths)
  within = np.arange(len(owner)) - np.repeat(packed_from.offsets[:-1], lengths)
  dest = bins[owner] * seq_len + starts[owner] + within
  shape = (num_bins, seq_len)
  tokens = np.full(shape, sid_sequences.PAD_TOKEN, np.int32)
  positions = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  labels = np.full(shape, sid_sequences.PAD_TOKEN, np.int32)
  weights = np.zeros(shape, np.float32)
  rows = np.full(shape, -1, np.int32)
  tokens.flat[dest] = packed_from.tokens
  positions.flat[dest] = within
  segment_ids.flat[dest] = slots[owner]
  # Position t of an example predicts its token t + 1.
  same = owner[1:] == owner[:-1]
  at = dest[:-1][same]
  labels.flat[at] = packed_from.tokens[1:][same]
  trained = packed_from.supervised[1:][same]
  weights.flat[at] = trained
  rows.flat[at[trained]] = owner[:-1][same][trained]
  cut = packed_from.truncated - tokenized.truncated
  stats = PackStats(sequences=num_bins, examples=len(lengths), tokens=int(lengths.sum()),
                    occupancy=float(lengths.sum() / max(1, num_bins * seq_len)),
                    cut_examples=int((cut > 0).sum()), tokens_cut=int(cut.sum()))
  return sid_sequences.PackedSequences(tokens, positions, segment_ids, labels, weights,
                                       rows), stats


def unpack_examples(packed: sid_sequences.PackedSequences) -> dict[int, dict[str, np.ndarray]]:
  """Recovers every example from packed arrays: {example index: {'tokens', 'positions',
  'supervised'}}, read from the segment that holds the example's trained labels."""
  out = {}
  for b, t in zip(*np.nonzero(packed.rows >= 0)):
    example = int(packed.rows[b, t])
    if example in out:
      continue
    span = packed.segment_ids[b] == packed.segment_ids[b, t]
    # Token j is supervised when the label at j - 1 carries weight.
    supervised = np.concatenate([[False], packed.weights[b, span][:-1] > 0])
    out[example] = {'tokens': packed.tokens[b, span], 'positions': packed.positions[b, span],
                    'supervised': supervised}
  return out


@dataclasses.dataclass(frozen=True)
class RLPrompt:
  """One RL prompt: `text` is tokenised as one string; the completion to reward is `target`
  (a SID string) + "\\n". source: one of RL_SOURCES; origin: split row or item id; item: the
  target item id (bound per prompt, not through the official text-keyed dicts)."""

  source: str
  text: str
  target: str
  item: int
  origin: int


def first_description(text: str) -> str:
  """The first element of an official description (a Python list literal as text; '' if empty).

  A few official descriptions are not valid literals (an unescaped quote inside an element);
  for those the text up to the first "', '" element boundary is taken.
  """
  text = text.strip()
  if not text:
    return ''
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return text.strip('[]').split("', '")[0].split('", "')[0].strip('\'"')
  if isinstance(value, (list, tuple)):
    return str(value[0]) if value else ''
  return str(value)


def rl_prompts(rows: Sequence[Mapping], items: ItemTable, *, sources: Sequence[str] = RL_SOURCES,
               wording: str = 'official', num_title_history: int = 10_000, seed: int = 0,
               leak_answer: bool = False, where: str = 'rows') -> list[RLPrompt]:
  """The RL prompts (the official ones are B(input) without the instruction header).

  sid_history: every row, the next-SID input. item_text: per distinct title (title -> SID) and
  per distinct first description element ('' included; description -> SID), the last item
  winning a key. title_history: `num_title_history` rows (all rows if fewer) drawn as pandas'
  `DataFrame.sample(n, random_state=seed)` draws them (RandomState(seed).choice without
  replacement), in drawn order. In the short wording each prompt is the matching short SFT
  prompt. `leak_answer` reproduces the official item_text bug: the answer SID ends the prompt.
  Prompts come in `sources` order; the official code shuffles them (seed 42).
  """
  unknown = [s for s in sources if s not in RL_SOURCES]
  if unknown:
    raise DataError(f'unknown RL prompt source (known: {RL_SOURCES})', field='sources',
                    value=unknown[0])
  if wording not in WORDINGS:
    raise DataError(f'unknown wording (known: {WORDINGS})', field='wording', value=wording)
  cat = _Catalogue(items, where)
  official = wording == 'official'
  out = []
  needs_rows = 'sid_history' in sources or 'title_history' in sources
  checked = _checked_rows(rows, items.num_items, where) if needs_rows else []
  if 'sid_history' in sources:
    for r, (history, target) in enumerate(checked):
      sids = [cat.sid(i) for i in history]
      text = (official_body(next_sid_input(sids)) if official
              else _SHORT['next_sid'] + ''.join(sids))
      out.append(RLPrompt('sid_history', text, cat.sid(target), target, r))
  if 'item_text' in sources:
    by_description = {first_description(d): i for i, d in enumerate(items.description)}
    keyed = [(f'Which item has the title: {title}?', _SHORT['title_to_sid'] + title + '\n', item)
             for title, item in cat.title_to_item.items()]
    keyed += [(f'An item can be described as follows: "{desc}". Which item is it describing?',
               _SHORT['description_to_sid'] + desc + '\n', item)
              for desc, item in by_description.items()]
    for official_input, short_prompt, item in keyed:
      sid = cat.sid(item)
      text = (official_body(official_input) if official else short_prompt)
      out.append(RLPrompt('item_text', text + (sid if leak_answer else ''), sid, item, item))
  if 'title_history' in sources:
    n = min(num_title_history, len(checked))
    for r in np.random.RandomState(seed).choice(len(checked), n, replace=False).tolist():
      history, target = checked[r]
      titles = [cat.title(i) for i in history]
      text = (official_body('Given the title sequence of user historical interactive items: '
                            f'{_quoted(titles, ", ")}, can you recommend a suitable next item '
                            'for the user?') if official
              else _SHORT['next_sid'] + ''.join(t + '\n' for t in titles))
      out.append(RLPrompt('title_history', text, cat.sid(target), target, r))
  return out


def tokenize_rl_prompts(prompts: Sequence[RLPrompt], tokenizer: TextTokenizer,
                        max_len: int = 512) -> tuple[list[np.ndarray], int]:
  """(int32 token ids of each prompt, each text encoded whole without special tokens and cut to
  its last `max_len` tokens; the number of prompts cut, also logged)."""
  encoded = tokenizer.encode_batch([p.text for p in prompts], add_special_tokens=False)
  cut = sum(len(ids) > max_len for ids in encoded)
  if cut:
    logging.warning('%d of %d RL prompts were cut to their last %d tokens', cut, len(prompts),
                    max_len)
  return [np.asarray(ids[-max_len:], np.int32) for ids in encoded], cut
