"""Healing (LayerChop's continued pretraining): `trainer` runs it (`heal`, `HealConfig`,
`export_healed`); its pieces are the losses, the learning-rate schedule and data order, LoRA
wrapping, training checkpoints (`state`), and the training log with its loss curve (`report`)."""
