"""Decoding: trie-constrained beam search and masked sampling over SIDs."""
