"""Errors a user can cause. The CLI prints their message on one line and exits with code 2.

Every message names the problem and the fix. Bugs are not wrapped: they stay tracebacks.
"""


class LayercutError(Exception):
    """Base class of every user-facing error."""


class ModelLoadError(LayercutError):
    """The model could not be found or read."""


class UnsupportedArchitectureError(LayercutError):
    """The model family is not in the adapter table, or lacks what a method needs."""


class DataError(LayercutError):
    """Calibration, evaluation or training data is missing, empty or malformed."""


class ConfigError(LayercutError):
    """A flag or recipe value is invalid or inconsistent with the model."""


class OutputExistsError(LayercutError):
    """The output path exists and --overwrite was not given."""


class OutputLocationError(LayercutError):
    """The output path cannot be written (read-only, not a folder) or its disk has no room."""


class RecipeError(ConfigError):
    """A recipe file that cannot be read, does not validate, or whose step failed; the message names the line."""


class NonFiniteError(LayercutError):
    """A model holds NaN/Inf weights or produces a NaN/Inf loss; the message names the first bad tensor."""
