"""Depth- and width-pruning methods: one module per method family, each holding its math and its
orchestration and registering itself in `methods.base`; `layercut.prune` and `layercut.slim` dispatch."""
