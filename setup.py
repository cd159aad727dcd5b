"""minirec-jax: a pure-JAX, functional reimplementation of MiniOneRec."""

import setuptools

setuptools.setup(
    name='minirec-jax',
    version='0.1.0',
    description='Generative recommendation with semantic IDs (MiniOneRec) in JAX',
    packages=setuptools.find_packages(include=['minirec_jax', 'minirec_jax.*']),
    package_data={'minirec_jax': ['**/*.md', '**/*.json', '**/*.txt', '**/*.tsv']},
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.10.2,<0.11',
        'flax>=0.12.8,<0.13',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12.8,<0.13',
        'chex>=0.1.92,<0.2',
        'numpy>=2.0,<3',
        'tensorflow-datasets>=4.9.10,<4.10',
        'array-record>=0.8.6,<0.9',
        'grain>=0.2.18,<0.3',
        'absl-py>=2.1,<3',
        'ml-collections>=1.0,<2',
        # Needed by tensorflow-datasets at run time when TensorFlow is absent.
        'importlib_resources>=6',
        # Text encoder inputs (MiniLM): tokenizer and safetensors weights, read in numpy mode.
        'tokenizers>=0.20,<1',
        'safetensors>=0.4,<1',
        # Pretrained LM checkpoints in GGUF (models/checkpoints.py, data/text_tokenizer.py):
        # its reader parses the file; the dequantisation is ours.
        'gguf>=0.19,<0.20',
    ],
    extras_require={
        # aiohttp: tests/serve_test.py serves the app on 127.0.0.1 (same pin as 'serve').
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'aiohttp==3.14.5'],
        # Only for minirec_jax/serving/server.py, experiments/serve.py and bench_serve.py (the
        # HTTP service, its server and the benchmark's client).
        'serve': ['aiohttp==3.14.5'],
        # Only for experiments/bench_hf.py, check_llm_parity.py and tests/hf_parity_test.py (the
        # side-by-side with the official PyTorch stack; accelerate: transformers' GGUF loader);
        # the library never imports torch or transformers.
        'bench': ['torch==2.13.0', 'transformers==5.24.0', 'accelerate==1.16.0'],
    },
)
