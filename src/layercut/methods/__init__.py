"""Pruning methods, one module per method family, each holding its math and its orchestration and
registering itself in `methods.base`: depth methods are dispatched by `layercut.prune`, width
methods by `methods.prunenet.slim_model`."""
