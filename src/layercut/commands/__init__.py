"""One module per `layercut` subcommand: each parses its flags and calls library functions."""
