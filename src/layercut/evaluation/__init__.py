"""Evaluation: perplexity, zero-shot multiple choice, stability, reports."""
