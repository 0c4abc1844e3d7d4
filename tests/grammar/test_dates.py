"""Epoch days: the day arithmetic the ETL and the OMOP restore share."""

from __future__ import annotations

from datetime import date

from cehrgpt.dates import MAX_DAY, age_in_years, date_to_day, day_to_date


def test_epoch_days_round_trip():
    assert date_to_day(date(1970, 1, 1)) == 0
    assert date_to_day(date(1969, 12, 31)) == -1
    assert date_to_day(date(2001, 6, 4)) == 11477
    assert day_to_date(11477) == date(2001, 6, 4)
    assert day_to_date(-1) == date(1969, 12, 31)


def test_the_last_day_is_the_last_date_the_cdm_holds():
    assert day_to_date(MAX_DAY) == date(9999, 12, 31)


def test_age_counts_whole_years_on_leap_days():
    assert age_in_years(date(2000, 2, 29), date_to_day(date(2001, 2, 28))) == 0
    assert age_in_years(date(2000, 2, 29), date_to_day(date(2001, 3, 1))) == 1
