"""Parameters and training FLOPs per epoch of SFT configs, for comparisons at matched compute.

  python experiments/epoch_cost.py \
      --config configs/sft.py:dataset=industrial,variant=S,sids=tokenizer \
      --config.sids.path=workdirs/tok_ind_rqvae --variants=decoder:S,tiger:S,decoder:S:depth=12

Each `arch:variant[:field=value]` replaces the config's model.arch and model.variant (and sets
an integer model field such as depth or width) with its protocol's batch size (TIGER's is
configs/sft.py's arch=tiger batch); prints one line per model and the ratio of each to the
first, and writes them as JSON with --output.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.infra import console
from minirec_jax.infra import io_utils
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import sft

_CONFIG = config_flags.DEFINE_config_file('config', None, 'SFT config (configs/sft.py).',
                                          lock_config=False)
_VARIANTS = flags.DEFINE_list('variants', ['decoder:S', 'tiger:S'],
                              'arch:variant[:field=value] (arch: decoder | tiger).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON path for the table.')


def _config_for(base, spec: str):
  arch, variant, *fields = spec.split(':')
  config = base.copy_and_resolve_references()
  protocol = load_config(f'configs/sft.py:arch={arch}')
  config.model.arch, config.model.variant = arch, variant
  for field in fields:
    name, _, value = field.partition('=')
    config.model[name] = int(value)
  config.train.batch_size = protocol.train.batch_size
  return config


def main(argv):
  del argv
  console.setup(None)
  rows = {}
  for spec in _VARIANTS.value:
    rows[spec] = sft.epoch_cost(_config_for(_CONFIG.value, spec))
  first = next(iter(rows.values()))['train_flops_per_epoch']
  print(f"{'model':<20}{'params':>12}{'steps/epoch':>13}{'FLOPs/epoch':>14}{'ratio':>8}")
  for spec, r in rows.items():
    print(f"{spec:<20}{r['params']:>12,}{r['steps_per_epoch']:>13,}"
          f"{r['train_flops_per_epoch']:>14.3e}{r['train_flops_per_epoch'] / first:>8.3f}")
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, rows)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
