"""Reinforcement fine-tuning: GRPO math, rollouts and the update step."""
