"""Evaluation: metrics, evaluation sets, the alert threshold, explanations, the card."""
