"""carecycle's own exceptions. Every layer raises these; `serve.errors` maps them to HTTP."""


class CarecycleError(Exception):
    """Base class: the message is meant for the person who has to act on it."""


class NotFoundError(CarecycleError):
    """An id that the record does not hold."""


class ConflictError(CarecycleError):
    """A request that is well-formed but clashes with what the record holds."""


class StoreError(CarecycleError):
    """The record cannot be opened or written."""
