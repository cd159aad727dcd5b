"""GRPO step time: rollout vs update, at the official size (64 prompts x 16 completions).

  python experiments/bench_grpo.py --init_from=workdirs/sft_ind_S_e10 [--steps=12]
      [--rollout=beam] [--output=docs/bench/grpo.json]

Runs the real GRPO loop (`grpo_loop.train_and_evaluate`) for `--steps` steps into a temporary
workdir with evaluation cut to a few rows, and reports the median seconds per step of the
rollout (constrained beam search or sampling, jitted) and of the update (rewards, reference
and policy log-probs, one optimizer step), the first step (compilation) apart.
"""

import json
import os
import tempfile

from absl import app
from absl import flags

from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import grpo as grpo_loop

_INIT_FROM = flags.DEFINE_string('init_from', None, 'SFT workdir.', required=True)
_STEPS = flags.DEFINE_integer('steps', 12, 'GRPO steps (the first one compiles).')
_ROLLOUT = flags.DEFINE_string('rollout', 'beam', 'beam | sample | dynamic.')
_PROMPTS = flags.DEFINE_integer('prompts', 64, 'Prompts per step.')
_GROUP = flags.DEFINE_integer('group_size', 16, 'Completions per prompt.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  config = load_config(f'configs/grpo.py:rollout={_ROLLOUT.value}')
  config.init_from = _INIT_FROM.value
  config.train.steps = _STEPS.value
  config.train.eval_every_steps = _STEPS.value
  config.train.prompts_per_step = _PROMPTS.value
  config.grpo.group_size = _GROUP.value
  config.eval.max_examples = 16
  config.eval.report_max_examples = 16
  config.eval.report = 'last'
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as workdir:
    step_times = grpo_loop.train_and_evaluate(config, workdir)['timing']
  result = {**timing.machine_record(), 'init_from': _INIT_FROM.value,
            'rollout': _ROLLOUT.value, 'prompts': _PROMPTS.value, 'group_size': _GROUP.value,
            'load_average_before': load_before, 'load_average_after': os.getloadavg()[0],
            **step_times}
  step = step_times['rollout_s_median'] + step_times['update_s_median']
  print(f'GRPO step ({_PROMPTS.value} prompts x {_GROUP.value}, {_ROLLOUT.value}): '
        f'{step:.2f} s median = rollout {step_times["rollout_s_median"]:.2f} s '
        f'({100 * step_times["rollout_share"]:.0f}%) + '
        f'update {step_times["update_s_median"]:.2f} s')
  print(json.dumps(result, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
