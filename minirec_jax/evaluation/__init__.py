"""Evaluation: ranking metrics, predictions files, generative (beam-search) evaluation."""
