"""Training's own exceptions (all `CarecycleError`: the message says what to change)."""

from feedback.errors import CarecycleError


class TrainConfigError(CarecycleError, ValueError):
    """A `TrainConfig` whose options cannot work together."""


class DatasetError(CarecycleError):
    """A training file that is missing, unreadable or not in TRL's conversational columns."""


class TooFewRowsError(CarecycleError):
    """Not enough rows to train: the run is skipped, not failed."""


class AdapterIntegrityError(CarecycleError):
    """An adapter folder whose manifest is missing or whose files do not match their checksum."""
