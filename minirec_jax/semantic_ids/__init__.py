"""Semantic IDs: item text embeddings and their tokenization into discrete codes."""
