"""The error of the rating package."""

from __future__ import annotations

from ..errors import OpenPrepayError


class RatingError(OpenPrepayError):
    """A meter cannot be rated with a tariff (missing registers, unpriced rate...)."""
