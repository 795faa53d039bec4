"""layercut: make causal language models shallower and slimmer while keeping their quality."""

__version__ = "0.1.0"
