"""The language model's tokenizer: from tokenizer.json and from a GGUF vocabulary; chat prompts.

A small byte-level BPE is trained here with the `tokenizers` library (the reference), its
vocabulary and merges written into a GGUF file with the `gguf` package's writer, and the
tokenizer rebuilt from that file must encode every text exactly as the reference does.
"""

import json

import gguf
import pytest
import tokenizers
from tokenizers import pre_tokenizers

from minirec_jax.data import text_tokenizer
from minirec_jax.data.errors import DataError

SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
CORPUS = [
    'The quick brown fox jumps over the lazy dog.',
    'Industrial safety gloves, size 10 (pack of 12)',
    'Stainless steel hex bolts M8 x 40mm, 25 pcs',
    "It's the 3rd time we've tested it; they'll see.",
    'Café naïve résumé — déjà vu',
    'tabs\tand\nnewlines\n\n  and   spaces',
    'x = 1234567 + 89',
]
TEXTS = CORPUS + [
    'unseen words: zebra quartz 2025!', '<|im_start|>user\nhello<|im_end|>\n', '  leading space',
    'emoji 🙂 and 中文', 'SID <a_1><b_2><c_3> after', '',
]


def _train(pre_tokenizer):
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=420, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS * 3, trainer)
  tokenizer.add_tokens([tokenizers.AddedToken('<a_1>', normalized=False)])
  return tokenizer


PRE = {
    'gpt-2': lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    'smollm': lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)]),
}


def _write_gguf(path, reference, pre='gpt-2', model='gpt2', add_bos=False, drop=()):
  """The reference's vocabulary as GGUF tokenizer metadata; `drop` leaves tokens out."""
  vocab = sorted(reference.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
  tokens = [t for t, _ in vocab]
  added = {t.content: t.special for t in reference.get_added_tokens_decoder().values()}
  types = [(3 if added[t] else 4) if t in added else 1 for t in tokens]
  merges = json.loads(reference.to_str())['model']['merges']
  writer = gguf.GGUFWriter(path, 'llama')
  writer.add_tokenizer_model(model)
  writer.add_tokenizer_pre(pre)
  keep = [i for i, t in enumerate(tokens) if t not in drop]
  writer.add_token_list([tokens[i] for i in keep])
  writer.add_token_types([types[i] for i in keep])
  writer.add_token_merges([m if isinstance(m, str) else ' '.join(m) for m in merges])
  writer.add_bos_token_id(tokens.index('<|im_start|>'))
  writer.add_eos_token_id(tokens.index('<|im_end|>'))
  writer.add_add_bos_token(add_bos)
  writer.add_chat_template('{{ chatml }}')
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


@pytest.fixture(scope='module', params=sorted(PRE))
def reference_and_gguf(request, tmp_path_factory):
  reference = _train(PRE[request.param]())
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.gguf')
  return reference, _write_gguf(path, reference, pre=request.param)


def test_gguf_tokenizer_encodes_like_the_reference(reference_and_gguf):
  reference, path = reference_and_gguf
  ours = text_tokenizer.TextTokenizer.from_gguf(path)
  assert ours.vocab_size == reference.get_vocab_size(with_added_tokens=True)
  for text in TEXTS:
    ids = ours.encode(text)
    assert ids == reference.encode(text).ids, text
    assert ours.decode(ids) == text
  assert ours.encode_batch(TEXTS) == [e.ids for e in reference.encode_batch(TEXTS)]
  assert (ours.bos_token, ours.eos_token, ours.pad_token) == ('<|im_start|>', '<|im_end|>', None)
  assert (ours.bos_id, ours.eos_id) == (1, 2)
  assert ours.added_tokens(special=True) == {t: i for i, t in enumerate(SPECIALS)}
  assert list(ours.added_tokens(special=False)) == ['<a_1>']
  assert ours.decode(ours.encode('<|im_end|> hi'), skip_special_tokens=True) == ' hi'
  assert ours.chat_template == '{{ chatml }}'


def test_saved_tokenizer_json_reads_back(reference_and_gguf, tmp_path):
  _, path = reference_and_gguf
  ours = text_tokenizer.TextTokenizer.from_gguf(path)
  ours.save(str(tmp_path / 'tokenizer.json'))
  back = text_tokenizer.TextTokenizer.from_file(str(tmp_path / 'tokenizer.json'))
  assert back.encode_batch(TEXTS) == ours.encode_batch(TEXTS)
  assert back.added_tokens() == ours.added_tokens()


def test_add_bos_token(tmp_path):
  path = _write_gguf(str(tmp_path / 'bos.gguf'), _train(PRE['gpt-2']()), add_bos=True)
  ours = text_tokenizer.TextTokenizer.from_gguf(path)
  assert ours.encode('hello')[0] == ours.bos_id == 1
  assert ours.encode('hello', add_special_tokens=False) == ours.encode('hello')[1:]


def test_qwen2_and_llama3_split_digits_as_those_models_do(tmp_path):
  reference = _train(PRE['gpt-2']())
  for pre, pieces in (('qwen2', ['x', 'Ġ', '1', '2', '3', '4', '5']),
                      ('llama-bpe', ['x', 'Ġ', '123', '45'])):
    path = _write_gguf(str(tmp_path / f'{pre}.gguf'), reference, pre=pre)
    ours = text_tokenizer.TextTokenizer.from_gguf(path)
    assert [p for p, _ in ours.tokenizer.pre_tokenizer.pre_tokenize_str('x 12345')] == pieces
    assert ours.decode(ours.encode('Hello world 2025')) == 'Hello world 2025'


def test_chatml_text():
  messages = [{'role': 'user', 'content': 'Recommend a drill.'}]
  assert text_tokenizer.chatml(messages, text_tokenizer.SMOLLM2_SYSTEM) == (
      '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face'
      '<|im_end|>\n<|im_start|>user\nRecommend a drill.<|im_end|>\n<|im_start|>assistant\n')
  with_system = [{'role': 'system', 'content': 'Be brief.'}] + messages + [
      {'role': 'assistant', 'content': '<a_1><b_2><c_3>'}]
  assert text_tokenizer.chatml(with_system, text_tokenizer.QWEN2_5_SYSTEM,
                               add_generation_prompt=False) == (
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nRecommend a drill.<|im_end|>\n'
      '<|im_start|>assistant\n<a_1><b_2><c_3><|im_end|>\n')
  assert text_tokenizer.chatml(messages) == (
      '<|im_start|>user\nRecommend a drill.<|im_end|>\n<|im_start|>assistant\n')


def test_chat_prompt_encodes_the_special_tokens_as_single_ids(reference_and_gguf):
  ours = text_tokenizer.TextTokenizer.from_gguf(reference_and_gguf[1])
  text = ours.chat_prompt([{'role': 'user', 'content': 'hi <a_1>'}])
  ids = ours.encode(text)
  assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
  assert ours.require_tokens(['<|im_end|>', '<a_1>']) == [2, ours.token_to_id('<a_1>')]


# ---------------------------------------------------------------------------------------------
# Bad input: one clear DataError naming file, field and value.


def test_tokenizer_without_a_token_the_prompts_need(tmp_path):
  path = _write_gguf(str(tmp_path / 'no_im_start.gguf'), _train(PRE['gpt-2']()),
                     drop={'<|im_start|>'})
  ours = text_tokenizer.TextTokenizer.from_gguf(path)
  with pytest.raises(DataError, match=f"{path}: field 'tokenizer.ggml.tokens' = "
                     r"'<\|im_start\|>': no such token; ChatML chat prompts need it"):
    ours.chat_prompt([{'role': 'user', 'content': 'hi'}])
  saved = str(tmp_path / 'tokenizer.json')
  ours.save(saved)
  from_json = text_tokenizer.TextTokenizer.from_file(saved)
  with pytest.raises(DataError, match=f"{saved}: field 'added_tokens' = '<b_7>': no such token; "
                     'SID prompts need it'):
    from_json.require_tokens(['<a_1>', '<b_7>'], 'SID prompts')
  # A vocabulary entry that is no added token: text spelling it out would be split.
  merged = next(t for t in from_json.tokenizer.get_vocab() if t.startswith('Ġ') and len(t) > 3)
  with pytest.raises(DataError, match='token is not a single added token'):
    from_json.require_tokens([merged])


@pytest.mark.parametrize('key,value,message', [
    ('tokenizer.ggml.model', 'llama', 'only byte-level BPE'),
    ('tokenizer.ggml.pre', 'deepseek-coder', 'unsupported pre-tokenizer'),
])
def test_unsupported_gguf_tokenizer(tmp_path, key, value, message):
  kwargs = {'model': value} if key.endswith('model') else {'pre': value}
  path = _write_gguf(str(tmp_path / 'bad.gguf'), _train(PRE['gpt-2']()), **kwargs)
  with pytest.raises(DataError, match=f"{path}: field '{key}' = '{value}': {message}"):
    text_tokenizer.TextTokenizer.from_gguf(path)


def test_missing_or_broken_tokenizer_json(tmp_path):
  with pytest.raises(DataError, match='missing tokenizer.json'):
    text_tokenizer.TextTokenizer.from_hf_directory(str(tmp_path))
  (tmp_path / 'tokenizer.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(DataError, match='not a tokenizers tokenizer.json'):
    text_tokenizer.TextTokenizer.from_file(str(tmp_path / 'tokenizer.json'))
