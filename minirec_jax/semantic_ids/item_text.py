"""Item text for embedding, by the official rule (reference §2, rq/text2emb/utils.py).

text = clean(title) + " " + clean(description), empty parts skipped, "unknown item" if both
are empty. clean: unescape HTML entities, strip tags, delete every '"', '\\n' and '\\r',
strip, end with exactly one '.'; a cleaned string of >= 2000 characters becomes ''.
"""

from __future__ import annotations

import html
import re

from minirec_jax.data.schema import ItemTable

_TAG = re.compile(r'<[^>]+>')
MAX_CHARS = 2000


def clean_text(text: str) -> str:
  text = _TAG.sub('', html.unescape(text or ''))
  text = text.replace('"', '').replace('\n', '').replace('\r', '').strip()
  if not text:
    return ''
  text = text.rstrip('.') + '.'
  return '' if len(text) >= MAX_CHARS else text


def item_text(title: str, description: str) -> str:
  parts = [p for p in (clean_text(title), clean_text(description)) if p]
  return ' '.join(parts) if parts else 'unknown item'


def item_texts(items: ItemTable) -> list[str]:
  return [item_text(t, d) for t, d in zip(items.title, items.description)]
