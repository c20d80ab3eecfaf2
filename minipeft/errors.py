"""Every error a user can meet, as one family.

Each message says what was wrong and what to do about it. The CLI prints the
message (no traceback) and exits non-zero, so keep them self-contained.
"""


class MinipeftError(Exception):
    """Base class of every error minipeft raises on purpose."""


class ConfigError(MinipeftError, ValueError):
    """A model or method configuration that minipeft cannot honour."""


class InputError(MinipeftError, ValueError):
    """Bad input to a model: ids, labels, masks, shapes."""


class CheckpointError(MinipeftError, ValueError):
    """A weights folder or file that is incomplete, mis-shaped or unreadable."""


class WeightsNotFoundError(MinipeftError, FileNotFoundError):
    """A path or model name that leads to no weights."""


class HubError(MinipeftError):
    """The Hugging Face hub could not be reached or used."""


class SaveError(MinipeftError, OSError):
    """A save that could not be completed (a full disk, a folder without write
    permission); what was there before the save is left as it was."""
