"""Infrastructure every layer may use: atomic files, configs, checkpoints, processes and
devices, host memory, metric logs, timing and optimizers. Imports nothing else of minirec_jax."""
