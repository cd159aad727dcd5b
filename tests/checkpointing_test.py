"""infra/checkpointing.Checkpoints: a run killed between its `best` and `latest` saves resumes."""

import numpy as np

from minirec_jax.infra import checkpointing


def _state(value: float) -> dict:
  return {'w': np.full((3,), value, np.float32)}


def test_resumed_run_replaces_the_step_an_interrupted_run_saved(tmp_path):
  first = checkpointing.Checkpoints(tmp_path, best_metric='ndcg')
  first.save(10, _state(1.0), metrics={'ndcg': 0.1})
  first.save(20, _state(2.0), metrics={'ndcg': 0.2})  # best/20 ...
  first.close()
  # ... but the kill came before latest/20 was final: the resumed run starts from step 10
  # and saves step 20 again, to both managers.
  checkpointing.Checkpoints(tmp_path, best_metric='ndcg')._latest.delete(20)
  again = checkpointing.Checkpoints(tmp_path, best_metric='ndcg')
  assert again.latest_step() == 10 and again.best_step() == 20
  again.save(20, _state(2.5), metrics={'ndcg': 0.25})
  again.wait()
  assert again.latest_step() == 20 and again.best_step() == 20
  state, _, metrics = again.restore_best(_state(0.0))
  np.testing.assert_array_equal(state['w'], 2.5)
  assert metrics == {'ndcg': 0.25}
  again.close()
