"""carecycle's own exceptions. Every layer raises these; `serve.errors` maps them to HTTP."""


class CarecycleError(Exception):
    """Base class: the message is meant for the person who has to act on it."""


class NotFoundError(CarecycleError):
    """An id that the record does not hold."""


class ConflictError(CarecycleError):
    """A request that is well-formed but clashes with what the record holds."""


class StoreError(CarecycleError):
    """The record cannot be opened or written."""


class StoreBusyError(StoreError):
    """The writer's queue is full: the write was not queued; the caller may retry after a pause."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreUnavailableError(StoreError):
    """The record's database server cannot be reached: nothing was read or written; the caller
    may retry after a pause, and the store reconnects by itself once the server answers."""

    def __init__(self, message: str, retry_after_s: float = 5.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s
