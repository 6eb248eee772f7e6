"""Errors that recemb raises on bad input.

Every error names what is wrong (file, column or key, first bad row) and how
to fix it. They subclass ``ValueError`` so that callers who only know the
standard library can still catch them.
"""

from __future__ import annotations


class RecembError(ValueError):
    """Base class of every user-facing recemb error."""


class DataValidationError(RecembError):
    """A table does not match its canonical schema (DESIGN.md §2)."""


class ConfigError(RecembError):
    """A pipeline config is malformed: unknown key, wrong type, bad override."""


class DatasetFetchError(RecembError):
    """A dataset could not be downloaded or failed its checksum."""


class NotFittedError(RecembError):
    """A model method that needs a trained model was called before ``fit`` (or ``load``)."""
