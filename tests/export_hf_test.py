"""experiments/export_hf.py: trained workdirs as transformers-loadable folders.

Two tiny workdirs are trained here (our SID-only decoder, and a random Llama written at test
time as a language-model backbone). Without torch (CI): the export reads back through our own
loaders to the same config, params, logits and token ids, its JSON files describe the
catalogue, an existing --output is refused, and a failed export leaves nothing. With the
'bench' extra (torch, transformers): transformers' own classes load the folder, with logits
equal to ours and, for the SID-only model, the same beam-50 top-10 items.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from minirec_jax.data import synthetic
from minirec_jax.data.text_tokenizer import TextTokenizer
from minirec_jax.loops import artifacts
from minirec_jax.models import checkpoints
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.serving import export
from minirec_jax.testing import hf_reference
from minirec_jax.testing import tiny_llm
from minirec_jax.testing import write_synthetic_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ('sid', 'llm')
JSON_FILES = {'config.json', 'model.safetensors', export.SID_VOCAB_FILE, export.CATALOGUE_FILE,
              export.ITEMS_FILE, export.INFO_FILE}


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, **kwargs)


def _export_command(workdir: str, output: str, *flags: str) -> list[str]:
  return [os.path.join(REPO, 'experiments', 'export_hf.py'), f'--workdir={workdir}',
          f'--output={output}', *flags]


def _wait(proc: subprocess.Popen, what: str) -> str:
  stdout, stderr = proc.communicate()
  assert proc.returncode == 0, f'{what}: {stderr[-3000:]}'
  return stdout


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """kind -> (policy, export folder) of two tiny SFT workdirs, trained side by side: 'sid'
  (our decoder) exported by the binary while 'llm' (a tiny Llama backbone) still trains, 'llm'
  exported by the library."""
  root = tmp_path_factory.mktemp('export')
  data = write_synthetic_layout(str(root / 'data'), synthetic.SyntheticParams(
      num_items=60, num_clusters=6, num_users=80, seed=0))
  llama = tiny_llm.write_tiny_llama(str(root / 'llama'))
  workdirs, procs = {}, {}
  for kind in KINDS:
    backbone = f',backbone=hf:{llama}' if kind == 'llm' else ''
    workdirs[kind] = str(root / f'wd_{kind}')
    command = [sys.executable, os.path.join(REPO, 'experiments', 'train_sft.py'),
               f'--config={os.path.join(REPO, "configs", "sft.py")}:dataset=industrial,tiny'
               f'{backbone}', '--config.data.category=Toy', f'--config.data.manual_dir={data}',
               f'--config.data.data_dir={root}/tfds_{kind}', '--config.mesh.num_devices=1',
               f'--workdir={workdirs[kind]}']
    procs[kind] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
  try:
    _wait(procs['sid'], 'train sid')
    sid_out = str(root / 'out_sid')
    procs['export'] = subprocess.Popen(
        [sys.executable, *_export_command(workdirs['sid'], sid_out)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    _wait(procs['llm'], 'train llm')
    llm_policy = artifacts.load_policy(workdirs['llm'])
    summary = export.export_policy(llm_policy, str(root / 'out_llm'), workdir=workdirs['llm'])
    assert summary['architecture'] == 'LlamaForCausalLM'
    assert json.loads(_wait(procs['export'], 'export_hf.py'))['architecture'] == (
        'Qwen2ForCausalLM')
  finally:
    for proc in procs.values():  # a failed step leaves no run behind
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return {'sid': (artifacts.load_policy(workdirs['sid']), sid_out),
          'llm': (llm_policy, summary['output'])}


def _read(folder: str, name: str):
  with open(os.path.join(folder, name), encoding='utf-8') as f:
    return json.load(f)


def _prompts(policy, users: int = 6, seed: int = 3) -> dict[str, np.ndarray]:
  """Left-padded prompts of random histories (some shorter than the prompt window)."""
  rec = policy.setup.recommender
  history, lengths = hf_reference.random_histories(policy.setup.sids.num_items, users,
                                                   rec.prompt_items, seed=seed)
  return history, lengths, rec.prompts(history, lengths)


def _logits(config, params, p) -> np.ndarray:
  return np.asarray(jax.jit(decoder_lib.Decoder(config).apply)(
      {'params': params}, p['tokens'], p['positions'],
      decoder_lib.causal_mask(np.asarray(p['mask']))))


def _flat(params) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


# ---------------------------------------------------------------------------------------------
# config_to_hf: the inverse of config_from_hf.


@pytest.mark.parametrize('fields', [
    dict(qkv_bias=True, tie_embeddings=True, rope_theta=1e6, rms_eps=1e-6),
    dict(qkv_bias=False, tie_embeddings=False, head_dim=16, dtype='bfloat16', max_len=256),
])
def test_config_to_hf_is_the_inverse_of_config_from_hf(fields):
  config = decoder_lib.DecoderConfig(vocab_size=50, width=32, depth=3, num_heads=4,
                                     num_kv_heads=2, mlp_dim=48, **fields)
  c = checkpoints.config_to_hf(config, eos_token_id=7)
  assert c['architectures'] == ['Qwen2ForCausalLM' if config.qkv_bias else 'LlamaForCausalLM']
  assert c['eos_token_id'] == 7 and c['bos_token_id'] is None
  assert checkpoints.config_from_hf(json.loads(json.dumps(c)), dtype=config.dtype) == config
  with pytest.raises(ValueError, match='dense MLPs only'):
    checkpoints.config_to_hf(decoder_lib.DecoderConfig(
        vocab_size=50, width=32, depth=1, num_heads=4, num_kv_heads=2, mlp_dim=48,
        num_experts=4))


def test_save_hf_directory_round_trips_an_untied_llama(tmp_path):
  config = decoder_lib.DecoderConfig(vocab_size=50, width=32, depth=2, num_heads=4,
                                     num_kv_heads=2, mlp_dim=48, qkv_bias=False,
                                     tie_embeddings=False, rope_theta=1e4)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                        decoder_lib.abstract_params(config))
  checkpoints.save_hf_directory(str(tmp_path), config, params)
  loaded_config, loaded = checkpoints.load_hf_directory(str(tmp_path))
  assert loaded_config == config
  assert 'lm_head.weight' in checkpoints.read_safetensors(str(tmp_path))
  assert _flat(loaded).keys() == _flat(params).keys()
  for name, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(loaded)[name], value, err_msg=name)


# ---------------------------------------------------------------------------------------------
# The exports, read back without torch.


@pytest.mark.parametrize('kind', KINDS)
def test_export_reloads_to_the_same_model(exported, kind):
  policy, out = exported[kind]
  expected = JSON_FILES | ({'tokenizer.json', 'tokenizer_config.json'} if kind == 'llm'
                           else set())
  assert set(os.listdir(out)) == expected
  config, params = checkpoints.load_hf_directory(out)
  assert config == policy.setup.model_config
  ours = _flat(jax.device_get(policy.params))
  loaded = _flat(params)
  assert loaded.keys() == ours.keys()
  for name, value in ours.items():
    assert loaded[name].dtype == np.float32
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  _, _, p = _prompts(policy)
  np.testing.assert_array_equal(_logits(config, params, p),
                                _logits(config, policy.params, p))


def test_language_model_tokenizer_reloads(exported):
  policy, out = exported['llm']
  ours = policy.setup.language_model.tokenizer
  loaded = TextTokenizer.from_hf_directory(out)
  assert loaded.vocab_size == ours.vocab_size == policy.setup.model_config.vocab_size
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
  for text in ['<a_1><b_2><c_3>', 'the <a_10><b_0><c_63>\n<|im_end|>',
               '<|im_start|>user\nHello<|im_end|>']:
    assert loaded.encode(text) == ours.encode(text), text
  config = _read(out, 'config.json')
  assert (config['bos_token_id'], config['eos_token_id'], config['pad_token_id']) == (
      ours.bos_id, ours.eos_id, ours.pad_id)


@pytest.mark.parametrize('kind', KINDS)
def test_json_files_describe_the_catalogue(exported, kind):
  policy, out = exported[kind]
  s = policy.setup
  rec = s.recommender
  vocab = _read(out, export.SID_VOCAB_FILE)
  np.testing.assert_array_equal(vocab['token_ids'], rec.token_map.table)
  assert vocab['terminator'] == list(rec.token_map.terminator)
  assert vocab['vocab_size'] == s.model_config.vocab_size
  if kind == 'llm':  # every SID token's name is that token in the exported tokenizer
    tokenizer = TextTokenizer.from_hf_directory(out)
    for level, row in enumerate(vocab['token_names']):
      for code, name in enumerate(row):
        assert tokenizer.token_to_id(name) == vocab['token_ids'][level][code]
    assert len(vocab['terminator']) == 2 and vocab['terminator'][-1] == tokenizer.eos_id
  else:
    assert vocab['terminator'] == [] and vocab['pad_token_id'] == 0
    assert vocab['token_ids'][1][2] == 1 + 1 * s.sids.codebook_size + 2

  cat = _read(out, export.CATALOGUE_FILE)
  np.testing.assert_array_equal(cat['item_codes'], s.sids.codes)
  np.testing.assert_array_equal(cat['item_tokens'], rec.item_tokens)
  np.testing.assert_array_equal(cat['item_group'], s.sids.item_to_group)
  table = np.asarray(vocab['token_ids'])
  listed = []
  for group in cat['groups']:
    members = group['items']
    assert group['group'] in members
    for item in members:
      assert cat['item_group'][item] == group['group']
      assert cat['item_codes'][item] == group['codes']
    assert group['tokens'] == table[np.arange(len(group['codes'])), group['codes']].tolist()
    listed += members
  assert sorted(listed) == list(range(s.sids.num_items))  # each item in exactly one group
  assert len({tuple(g['codes']) for g in cat['groups']}) == len(cat['groups'])

  items = _read(out, export.ITEMS_FILE)['items']
  assert [row['item_id'] for row in items] == list(range(s.sids.num_items))
  assert [row['title'] for row in items] == list(s.dataset.items.title)
  assert items[5]['sid'] == ''.join(f'<{"abc"[l]}_{c}>' for l, c in enumerate(s.sids.codes[5]))
  info = _read(out, export.INFO_FILE)
  assert info['prompt']['max_items'] == rec.prompt_items
  assert info['prompt']['kind'] == ('next_sid' if kind == 'llm' else 'sid_history')


# ---------------------------------------------------------------------------------------------
# Refusals and failures.


def test_existing_output_is_refused_unless_overwrite(exported, tmp_path):
  policy, _ = exported['sid']
  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  done = _run(_export_command('/nonexistent/workdir', str(out)))
  assert done.returncode == 2
  assert f'error: {out} exists and is not empty; pass --overwrite' in done.stderr
  assert os.listdir(out) == ['keep.txt']
  with pytest.raises(FileExistsError, match='not empty'):
    export.export_policy(policy, str(out))
  (tmp_path / 'empty').mkdir()  # an empty folder is fine
  export.export_policy(policy, str(tmp_path / 'empty'))
  assert export.CATALOGUE_FILE in os.listdir(tmp_path / 'empty')
  export.export_policy(policy, str(out), overwrite=True)
  assert set(os.listdir(out)) == JSON_FILES
  with pytest.raises(ValueError, match='would replace the workdir'):
    export.export_policy(policy, str(tmp_path), overwrite=True,
                         workdir=str(tmp_path / 'taken'))
  assert sorted(os.listdir(tmp_path)) == ['empty', 'taken']


def test_failed_export_leaves_no_output(exported, tmp_path, monkeypatch):
  policy, _ = exported['sid']

  def broken(_):
    raise RuntimeError('disk full')

  monkeypatch.setattr(export, 'items_json', broken)  # after the weights are written
  with pytest.raises(RuntimeError, match='disk full'):
    export.export_policy(policy, str(tmp_path / 'new'))
  assert os.listdir(tmp_path) == []  # neither the output nor the temporary folder
  old = tmp_path / 'old'
  old.mkdir()
  (old / 'config.json').write_text('{"previous": true}')
  with pytest.raises(RuntimeError, match='disk full'):
    export.export_policy(policy, str(old), overwrite=True)
  assert os.listdir(tmp_path) == ['old']
  assert os.listdir(old) == ['config.json']
  assert json.loads((old / 'config.json').read_text()) == {'previous': True}


# ---------------------------------------------------------------------------------------------
# transformers itself (the 'bench' extra: skipped where torch is not installed).


@pytest.fixture(scope='module')
def transformers():
  pytest.importorskip('torch')
  return pytest.importorskip('transformers')


@pytest.mark.parametrize('kind', KINDS)
def test_transformers_logits_match(exported, transformers, kind):
  policy, out = exported[kind]
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(model).__name__ == ('Qwen2ForCausalLM' if kind == 'sid' else 'LlamaForCausalLM')
  _, lengths, p = _prompts(policy)
  assert not p['mask'].all()  # some prompts are left-padded
  parity = hf_reference.logits_parity(policy.setup.model_config, policy.params, model, p, k=5,
                                      tol=1e-4)
  assert parity['logits_max_abs_diff'] <= 1e-4, parity
  assert parity['top5_tokens_agree_ties_aside_rate'] == 1.0, parity
  if kind == 'llm':
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ours = policy.setup.language_model.tokenizer
    text = ours.decode(p['tokens'][0][p['mask'][0]])
    assert tokenizer(text)['input_ids'] == ours.encode(text)
    assert tokenizer.eos_token_id == ours.eos_id and tokenizer.pad_token_id == ours.pad_id


def test_transformers_beam_search_gives_our_top_items(exported, transformers):
  policy, out = exported['sid']
  rec = policy.setup.recommender
  cat = _read(out, export.CATALOGUE_FILE)
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  history, lengths, p = _prompts(policy, users=5, seed=7)
  beam, k = 50, 10
  ours, our_scores = rec.recommend(policy.params, history, lengths, beam)  # beam 50, items
  tokens, scores = hf_reference.hf_beam_search(
      model, p, hf_reference.prefix_table(np.asarray(cat['item_tokens'])), beam=beam,
      num_levels=cat['num_levels'])
  # Their SIDs -> items through the exported groups only (as a user of the folder would).
  theirs, their_scores = hf_reference.catalogue_items(cat, tokens, scores, k + 1)
  assert (theirs >= 0).all()
  strict, ties_aside = hf_reference.ranked_agreement(ours[:, :k + 1], our_scores[:, :k + 1],
                                                     theirs, their_scores, k, tol=1e-4)
  assert ties_aside.all(), (ours[:, :k], theirs[:, :k])
  assert strict.mean() >= 0.6
