"""minirec-jax: generative recommendation with semantic IDs (MiniOneRec) in pure JAX."""

__version__ = '0.1.0'
