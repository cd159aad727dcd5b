"""Serving trained models: recommendations for new histories (files now; HTTP next)."""
