"""Training: state, optimizers, pure step factories and the helpers that jit or pmap them."""
