"""Dates as whole days since 1970-01-01 ("epoch days"): the one set of day arithmetic.

The ETL (:mod:`cehrgpt.data.sequences`) writes sequences on epoch days and the
OMOP restore (:mod:`cehrgpt.omop.decode`) reads them back on epoch days; both
convert with these helpers so a day means the same date on both sides.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
MAX_DAY = date(9999, 12, 31).toordinal() - EPOCH_ORDINAL  # the last date Spark and the CDM can hold


@lru_cache(maxsize=65536)
def day_to_date(day: int) -> date:
    """The date of epoch day ``day`` (cached: the ETL converts the same few days millions of times)."""
    return date.fromordinal(EPOCH_ORDINAL + day)


def date_to_day(value: date) -> int:
    """Days since 1970-01-01."""
    return value.toordinal() - EPOCH_ORDINAL


def age_in_years(birth: date, day: int) -> int:
    """Whole years between ``birth`` and epoch day ``day`` (the usual birthday rule)."""
    on = day_to_date(day)
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
