"""The package's layers: a module may import its own layer and the layers below it, never above.

The order is written once, here (BUILD.md's package map shows the same list). A new folder under
minirec_jax/ must be placed in it, or this test fails.
"""

import ast
import os

import pytest

# Lowest first. Each entry is a folder under minirec_jax/.
LAYERS = (
    'infra',         # files, configs, checkpoints, devices, logs, timing, optimizers
    'data',          # datasets, input pipelines, SID sequences, SASRec packing
    'semantic_ids',  # item text -> embeddings -> RQ-VAE / RQ-KMeans codes -> SIDs, the trie
    'models',        # stateless flax modules: decoder, SASRec, baselines, MoE
    'decoding',      # trie-constrained beam search and sampling
    'evaluation',    # ranking metrics, generative evaluation, prediction files
    'rl',            # rewards, GRPO losses and step
    'training',      # train state, pure SFT/SASRec steps, jit/pmap helpers
    'loops',         # host loops: data -> jitted steps -> checkpoints -> reports
    'serving',       # recommendations for new histories from a trained workdir
    'pipeline',      # every stage into one workdir, the results table
    'testing',       # fixtures and reference implementations for tests
)
PACKAGE = os.path.join(os.path.dirname(__file__), os.pardir, 'minirec_jax')


def _modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        yield os.path.relpath(path, PACKAGE), path


def _imported_layers(path: str) -> set[tuple[str, int]]:
  """(top-level folder of minirec_jax that the module imports, line), lazy imports included."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      parts = node.module.split('.')
      if parts[0] != 'minirec_jax':
        continue
      if len(parts) > 1:
        found.add((parts[1], node.lineno))
      else:  # from minirec_jax import x
        found.update((alias.name, node.lineno) for alias in node.names)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split('.')
        if parts[0] == 'minirec_jax' and len(parts) > 1:
          found.add((parts[1], node.lineno))
  return found


def test_every_folder_has_a_layer():
  folders = {name for name in os.listdir(PACKAGE)
             if os.path.isfile(os.path.join(PACKAGE, name, '__init__.py'))}
  assert folders == set(LAYERS)
  loose = {name for name in os.listdir(PACKAGE) if name.endswith('.py')}
  assert loose == {'__init__.py'}, 'modules belong in a layer folder, not at the package root'


@pytest.mark.parametrize('relpath,path', sorted(_modules()))
def test_imports_only_go_down(relpath, path):
  layer = relpath.split(os.sep)[0]
  if layer == '__init__.py':
    return  # the public API table names modules as strings and imports them lazily
  rank = LAYERS.index(layer)
  upward = sorted(f'line {line}: imports minirec_jax.{imported} (layer {LAYERS.index(imported)})'
                  for imported, line in _imported_layers(path)
                  if imported in LAYERS and LAYERS.index(imported) > rank)
  unknown = sorted(f'line {line}: minirec_jax.{imported}'
                   for imported, line in _imported_layers(path) if imported not in LAYERS)
  assert not upward, f'{relpath} (layer {rank}, {layer}) imports from above: {upward}'
  assert not unknown, f'{relpath} imports a module outside every layer: {unknown}'


def test_an_upward_import_is_caught(tmp_path):
  module = tmp_path / 'bad.py'
  module.write_text('from minirec_jax.loops import sft\nimport minirec_jax.infra.io_utils\n')
  assert _imported_layers(str(module)) == {('loops', 1), ('infra', 2)}
