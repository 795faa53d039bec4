"""Evaluation: perplexity, zero-shot multiple choice, stability, reports."""

DEFAULT_LOGITS_MIB = 256  # MiB of float32 logits computed at once (light here: the CLI parser reads it)
