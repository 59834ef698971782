"""Exception types users can hit. Each message names the file or field and says what to do."""


class PriorCLIPError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(PriorCLIPError, ValueError):
    """A model or training configuration is unknown, has a wrong type or an impossible value."""


class CheckpointError(PriorCLIPError):
    """A checkpoint file cannot be read or does not match the model."""


class DataError(PriorCLIPError):
    """A dataset, caption file or image cannot be used."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are missing; the message lists which."""
