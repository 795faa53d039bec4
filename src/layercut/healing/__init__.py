"""The pieces of healing (LayerChop's continued pretraining), used by `layercut.heal`:
losses, the learning-rate schedule and data order, LoRA wrapping, training checkpoints, and the
training log with its loss curve."""
