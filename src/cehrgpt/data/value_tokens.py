"""Event values → value tokens: the bins learned on the training split (Spark) and each event's token (pure).

An event carries, where its table has them, ``value_as_number``, ``value_as_concept_id`` and
``unit_concept_id`` (measurement, observation) or ``duration_days`` (drug_exposure: end − start, else
``days_supply`` when the end is null and the supply above 0). :func:`learn_value_bins` learns, from the
training persons' kept events only, per concept the robust quantile bins of its numbers
(:func:`cehrgpt.values.bin_quantiles` through Spark's ``percentile_approx``), its most frequent unit,
the categorical values seen in enough patients, and the median training duration of each drug-duration
bin. :func:`choose_value` then gives one event its value token (at most one; spellings from
:mod:`cehrgpt.grammar`) or the reason its value was dropped.

Rules:

* A number comes before a categorical value: a row with both writes its bin token and drops the category
  (counted ``category_after_number``); a row whose number cannot be written (rare concept, non-finite)
  falls back to its category.
* A concept whose finite numbers come from fewer than ``min_concept_patients`` training patients has no
  bins: its numbers get no token (``rare_concept``). A non-finite number gets none (``non_finite``).
* A categorical value (``value_as_concept_id`` above 0) seen with its concept in fewer than
  ``min_concept_patients`` training patients gets no token (``rare_category``).
* A drug duration of 1 day or more gets its fixed bin (:func:`cehrgpt.grammar.drug_duration_token`); 0 days
  none (ends the day it starts); a negative one none (``negative_duration``).
* Units: ``unit_concept_id`` null or 0 is no unit. A concept's unit is the most frequent one among its
  training values that have one (ties: the smallest id); values recorded with another unit are counted
  (``other_unit_values``) and binned all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cehrgpt import grammar, values

NUMBER, CATEGORY, DURATION = "number", "category", "duration"
VALUE_CLASSES = (NUMBER, CATEGORY, DURATION)

# Why a value got no token (an event keeps its concept token either way).
RARE_CONCEPT = "rare_concept"
RARE_CATEGORY = "rare_category"
NON_FINITE = "non_finite"
NEGATIVE_DURATION = "negative_duration"
CATEGORY_AFTER_NUMBER = "category_after_number"
DROP_REASONS = (RARE_CONCEPT, RARE_CATEGORY, NON_FINITE, NEGATIVE_DURATION, CATEGORY_AFTER_NUMBER)

#: The value columns an event carries (null where its table has none).
VALUE_COLUMNS = ("value_as_number", "value_as_concept_id", "unit_concept_id", "duration_days")


@dataclass(frozen=True)
class EventValue:
    """The value token written after one event's concept, and what the sequence's value columns record."""

    token: str
    value_class: str  # NUMBER, CATEGORY or DURATION
    number: float | None = None  # the source value_as_number (NUMBER)
    value_concept_id: int | None = None  # the source value_as_concept_id (CATEGORY)
    unit_concept_id: int | None = None  # the row's own unit (NUMBER, CATEGORY)

    def sort_key(self) -> tuple[str, float, int, int]:
        """Orders events that tie on (day, concept): by token, then by the source value."""
        number = self.number if self.number is not None and math.isfinite(self.number) else math.inf
        return (self.token, number, self.value_concept_id or 0, self.unit_concept_id or 0)


class ValueCoder:
    """:class:`cehrgpt.values.ValueBins` arranged for one lookup per event."""

    def __init__(self, bins: values.ValueBins):
        self.bins = bins
        self.edges = {c: b.edges for c, b in bins.numbers.items()}
        self.categories = {(c, v) for c, vs in bins.categories.items() for v in vs}

    def choose(
        self,
        concept_id: int,
        number: float | None,
        value_concept_id: int | None,
        unit_concept_id: int | None,
        duration_days: int | None,
    ) -> tuple[EventValue | None, list[str]]:
        """The event's value token (None when it has none) and the reasons any of its values were dropped."""
        dropped: list[str] = []
        unit = unit_concept_id if unit_concept_id else None
        category = value_concept_id if value_concept_id is not None and value_concept_id > 0 else None
        if number is not None:
            edges = self.edges.get(concept_id)
            if not math.isfinite(number):
                dropped.append(NON_FINITE)
            elif edges is None:
                dropped.append(RARE_CONCEPT)
            else:
                if category is not None:
                    dropped.append(CATEGORY_AFTER_NUMBER)
                token = grammar.value_bin_token(values.bin_number(edges, number))
                return EventValue(token, NUMBER, number=number, unit_concept_id=unit), dropped
        if category is not None:
            if (concept_id, category) in self.categories:
                token = grammar.value_concept_token(category)
                return EventValue(token, CATEGORY, value_concept_id=category, unit_concept_id=unit), dropped
            dropped.append(RARE_CATEGORY)
        if duration_days is not None:
            if duration_days < 0:
                dropped.append(NEGATIVE_DURATION)
            elif (token_or_none := grammar.drug_duration_token(duration_days)) is not None:
                return EventValue(token_or_none, DURATION), dropped
        return None, dropped


# --- Spark: what the events carry, and the bins learned from the training split ---------------------------


def drug_duration_days(end_date: Column, start_date: Column, days_supply: Column) -> Column:
    """Days from start to end; where the end is null, ``days_supply`` when above 0; else null."""
    return F.coalesce(
        F.datediff(end_date, start_date),
        F.when(days_supply > 0, days_supply.cast(T.IntegerType())),
    ).cast(T.IntegerType())


def _finite(column: Column) -> Column:
    return column.isNotNull() & ~F.isnan(column) & (F.abs(column) < F.lit(math.inf))


def _duration_edge(days: Column) -> Column:
    """The lower edge of ``days``' duration bin (null below the first edge), as the grammar's token names it."""
    edges = grammar.DRUG_DURATION_EDGES_DAYS
    expression = F.when(days >= edges[-1], F.lit(edges[-1]))
    for edge in reversed(edges[:-1]):
        expression = expression.when(days >= edge, F.lit(edge))
    return expression


def _with_patients(frame: DataFrame, keys: list[str], *aggregates: Column) -> DataFrame:
    """``aggregates`` per ``keys`` beside the distinct persons per ``keys`` (``patients``).

    Two aggregations joined, not one: beside ``countDistinct`` Spark plans ``percentile_approx`` over an
    expanded copy of the rows, which made learning Eunomia 20x's duration medians 35 s instead of 2 s.
    """
    patients = frame.groupBy(*keys).agg(F.countDistinct("person_id").alias("patients"))
    return patients.join(frame.groupBy(*keys).agg(*aggregates), on=keys)


def learn_value_bins(
    training_events: DataFrame, num_bins: int, min_concept_patients: int
) -> tuple[values.ValueBins, dict[str, int]]:
    """The value bins of the training split, and what they left out.

    Args:
        training_events: the training persons' kept events: ``person_id``, ``concept_id`` and
            :data:`VALUE_COLUMNS`.
        num_bins: bins per concept (:func:`cehrgpt.values.bin_quantiles`).
        min_concept_patients: the fewest distinct training patients a concept's numbers, a
            (concept, categorical value) pair or a duration bin's median needs.

    Returns:
        The bins, and counts: ``concepts_without_bins`` (numbers from too few patients),
        ``categories_without_token`` (pairs seen in too few patients).
    """
    quantiles = values.bin_quantiles(num_bins)
    number = F.col("value_as_number")
    numbers = training_events.where(_finite(number)).select(
        "person_id",
        "concept_id",
        number.alias("number"),
        F.when(F.col("unit_concept_id") != 0, F.col("unit_concept_id")).alias("unit"),
    )
    per_concept = _with_patients(
        numbers,
        ["concept_id"],
        F.count(F.lit(1)).alias("values"),
        F.percentile_approx("number", quantiles, 10_000).alias("quantiles"),
    ).collect()
    unit_counts: dict[int, list[tuple[int, int]]] = {}
    for row in numbers.where(F.col("unit").isNotNull()).groupBy("concept_id", "unit").count().collect():
        unit_counts.setdefault(row["concept_id"], []).append((row["unit"], row["count"]))
    number_bins: dict[int, values.NumberBins] = {}
    rare_concepts = 0
    for row in per_concept:
        if row["patients"] < min_concept_patients:
            rare_concepts += 1
            continue
        units = sorted(unit_counts.get(row["concept_id"], []), key=lambda uc: (-uc[1], uc[0]))
        unit = units[0][0] if units else None
        number_bins[row["concept_id"]] = values.NumberBins(
            edges=values.number_edges(row["quantiles"]),
            unit_concept_id=unit,
            patients=row["patients"],
            values=row["values"],
            other_unit_values=sum(n for _, n in units[1:]),
        )

    category = F.col("value_as_concept_id")
    pairs = (
        training_events.where(category.isNotNull() & (category > 0))
        .groupBy("concept_id", "value_as_concept_id")
        .agg(F.countDistinct("person_id").alias("patients"))
        .collect()
    )
    categories: dict[int, list[int]] = {}
    rare_pairs = 0
    for row in pairs:
        if row["patients"] < min_concept_patients:
            rare_pairs += 1
        else:
            categories.setdefault(row["concept_id"], []).append(row["value_as_concept_id"])

    days = F.col("duration_days")
    durations = _with_patients(
        training_events.where(days >= grammar.DRUG_DURATION_EDGES_DAYS[0]).withColumn(
            "edge", _duration_edge(days)
        ),
        ["edge"],
        F.percentile_approx(days, 0.5, 10_000).alias("median"),
    ).collect()
    duration_days = {
        str(grammar.drug_duration_token(row["edge"])): int(row["median"])
        for row in durations
        if row["patients"] >= min_concept_patients
    }
    bins = values.ValueBins(
        numbers=number_bins,
        categories={c: sorted(vs) for c, vs in categories.items()},
        duration_days=duration_days,
        num_bins=num_bins,
        min_concept_patients=min_concept_patients,
    )
    return bins, {"concepts_without_bins": rare_concepts, "categories_without_token": rare_pairs}
