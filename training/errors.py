"""Failures a training run reports as one clear line (``error: ...``) and a non-zero exit."""


class TrainingError(Exception):
    """Base of the expected failures of a training run."""


class ConfigError(TrainingError, ValueError):
    """A hyper-parameter is out of range."""


class DatasetUnavailable(TrainingError):
    """A dataset's package or files are missing or unreadable."""


class ParityError(TrainingError):
    """onnxruntime and PyTorch disagree beyond the tolerance; nothing is published."""
