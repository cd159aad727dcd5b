"""The end-to-end pipeline: every registered stage into one workdir, resumably, and the results
table of every registered method (by default MiniOneRec's stages, dataset to evaluation, and its
SASRec, SFT and SFT+GRPO rows).

  registry.py    Stage, Method, the registry and the run order its inputs imply
  minionerec.py  MiniOneRec's stages and table rows, registered on import
  runner.py      plans, checks, runs and resumes the stages; writes the results table
  results.py     the metrics on the rows every method ranked, and their Markdown

A new stage or row is one `registry.register_stage(...)` or `registry.register_method(...)` call
next to its body; the run order follows from the stages' inputs.
"""

from minirec_jax.pipeline.registry import REGISTRY
from minirec_jax.pipeline.registry import StageGraphError
from minirec_jax.pipeline.results import evaluate_methods
from minirec_jax.pipeline.results import results_markdown
from minirec_jax.pipeline.runner import CONFIG_FILE
from minirec_jax.pipeline.runner import DONE_FILE
from minirec_jax.pipeline.runner import PipelineResult
from minirec_jax.pipeline.runner import run
from minirec_jax.pipeline.runner import stage_keys
from minirec_jax.pipeline.runner import StageMismatchError
from minirec_jax.pipeline.runner import stages

# Every registered stage in registration order (a config plans those it enables, TIGER's only
# with a `tiger` section, and runs them after their inputs: registry.run_order).
STAGES = REGISTRY.stage_names()

__all__ = ['CONFIG_FILE', 'DONE_FILE', 'REGISTRY', 'STAGES', 'PipelineResult', 'StageGraphError',
           'StageMismatchError', 'evaluate_methods', 'results_markdown', 'run', 'stage_keys',
           'stages']
