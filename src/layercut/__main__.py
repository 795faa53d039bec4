"""Allow `python -m layercut ...` (and `torchrun -m layercut ...`)."""

from layercut.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
