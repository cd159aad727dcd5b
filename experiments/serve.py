"""An HTTP JSON recommendation service for a trained workdir (SFT, GRPO or train_sasrec).

  python experiments/serve.py --workdir workdirs/sft_ind_S_ours_s0 --port 8080 \
      [--host 127.0.0.1] [--max_batch 64] [--max_wait_ms 0] [--top_k 10]

  curl -s localhost:8080/recommend -d '{"histories": [[3, 8, 12], [5]], "top_k": 5}'
  curl -s localhost:8080/healthz

Concurrent requests are batched into one model call (up to --max_batch histories: those that
arrived while the previous call ran, or waiting up to --max_wait_ms > 0); every batch size the
server pads to is compiled before the port opens.
--top_k is the beam and the most items a request may ask for. Errors are JSON {"error": ...}
(4xx for a bad request, 500 for a model failure). See minirec_jax/serving/server.py.
--random_init serves model S with random parameters on Industrial (load tests, no workdir).
"""

from absl import app
from absl import flags

from minirec_jax.infra import host_memory
from minirec_jax.infra.config_utils import load_config
from minirec_jax.serving import server

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir.')
_RANDOM = flags.DEFINE_bool('random_init', False, 'Serve --random_config with random params.')
_RANDOM_CONFIG = flags.DEFINE_string('random_config', 'configs/sft.py:dataset=industrial',
                                     'The SFT config of --random_init.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on.')
_PORT = flags.DEFINE_integer('port', 8080, 'Port to listen on.', lower_bound=0)
_TOP_K = flags.DEFINE_integer('top_k', 10, 'Beam width: the most items a request may ask for.',
                              lower_bound=1)
_MAX_BATCH = flags.DEFINE_integer('max_batch', 64, 'Histories per model call.', lower_bound=1)
_MAX_WAIT = flags.DEFINE_float('max_wait_ms', 0.0, 'Longest wait for a batch to fill (0: none).',
                               lower_bound=0.0)
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', [], 'Padded batch shapes (default: powers of '
                                 'two up to --max_batch).')
_MAX_HISTORIES = flags.DEFINE_integer('max_histories', 256, 'Histories per request.',
                                      lower_bound=1)
_MAX_BODY = flags.DEFINE_integer('max_body_bytes', 1 << 20, 'Request body size limit.',
                                 lower_bound=1)
_ACCESS_LOG = flags.DEFINE_bool('access_log', False, 'Log every request.')


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  if _RANDOM.value == bool(_WORKDIR.value):
    raise app.UsageError('give exactly one of --workdir or --random_init')
  model = server.load_model(_WORKDIR.value or None,
                            load_config(_RANDOM_CONFIG.value) if _RANDOM.value else None)
  options = server.ServerOptions(
      top_k=_TOP_K.value, max_batch=_MAX_BATCH.value, max_wait_ms=_MAX_WAIT.value,
      batch_sizes=tuple(int(s) for s in _BATCH_SIZES.value), max_histories=_MAX_HISTORIES.value,
      max_body_bytes=_MAX_BODY.value)
  server.serve(model, options, host=_HOST.value, port=_PORT.value, access_log=_ACCESS_LOG.value)


if __name__ == '__main__':
  app.run(main)
