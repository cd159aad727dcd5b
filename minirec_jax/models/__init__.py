"""Models: the generative decoder (Qwen2/Llama architecture) and its size variants."""
