"""Item text for embedding, by the official rule (rq/text2emb: `clean_text`, `generate_text`).

text = clean(title) + " " + clean(description), fields whose cleaned form is empty skipped,
"unknown item" if nothing is left. For a string field the official `clean_text`:

  1. strips surrounding whitespace (first, before anything else),
  2. unescapes HTML entities, removes tags matching `</?\\w+[^>]*>`,
  3. deletes every '"', '\\n' and '\\r',
  4. ends the text with exactly one '.', collapsing trailing dots (its loop never looks at the
     first character, so an all-dot string keeps one dot more: '.' -> '..'),
  5. returns '' when the result has >= 2000 characters,

and `generate_text` strips each cleaned field again. Reproduced exactly, quirks included,
because the text decides the embedding; the official write-up's summary
differs from the code in three corner cases, and the code wins:
  - an empty field is NOT skipped: it cleans to '.', so an item with an empty description
    gets 'Title. .' (229 Industrial items); only a >= 2000-char field cleans to '' and is
    skipped, and "unknown item" needs both fields dropped that way;
  - the strip of step 1 comes before tag removal, so 'x <br>' becomes 'x .';
  - only tags that start with a word character go ('a < b > c' is kept).
"""

from __future__ import annotations

import html
import re

from minirec_jax.data.schema import ItemTable

MAX_CHARS = 2000
UNKNOWN = 'unknown item'
_TAG = re.compile(r'</?\w+[^>]*>')
_DROPPED = re.compile(r'["\n\r]')


def clean_text(text: str) -> str:
  """One field, cleaned exactly like the official `clean_text` (see the module docstring)."""
  text = _DROPPED.sub('', _TAG.sub('', html.unescape(text.strip())))
  trailing = len(text) - len(text.rstrip('.'))
  text = text[:len(text) - min(trailing, max(len(text) - 1, 0))] + '.'
  return '' if len(text) >= MAX_CHARS else text


def item_text(title: str, description: str) -> str:
  """`clean(title) + ' ' + clean(description)` with empty parts skipped, else 'unknown item'."""
  parts = [p for p in (clean_text(title).strip(), clean_text(description).strip()) if p]
  return ' '.join(parts) if parts else UNKNOWN


def item_texts(items: ItemTable) -> list[str]:
  """The text of every item, indexed by item id: `[num_items]`."""
  return [item_text(t, d) for t, d in zip(items.title, items.description)]
