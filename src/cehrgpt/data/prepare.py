"""``python -m cehrgpt.data.prepare``: OMOP CDM → CEHR-GPT patient sequences (a PySpark job).

Writes, all at once (into a temporary sibling folder ``.OUT.tmp-*`` renamed at the end, so a
failed run leaves nothing that looks complete, and a rerun replaces the old output;
OUT may be a local path or a Hadoop URI such as ``gs://`` or ``s3a://``)::

    OUT/patient_sequence/train/*.parquet   OUT/patient_sequence/test/*.parquet
    OUT/omop_vocab/concept/                 (or --vocabulary_folder V: V/concept/)
    OUT/omop_vocab/value_bins.json          (or V/value_bins.json; not with --no_values)
    OUT/prompts/*.parquet                   (or --prompts_folder P)
    OUT/prepare_report.json

``prompts`` holds the first 4 tokens (year, age, gender, race) of each training
sequence, a ``concept_ids`` column like the sequences', so generation reads its
prompts from a few megabytes instead of every sequence. The vocabulary is the
``concept`` table only: no stage reads ``concept_relationship`` or
``concept_ancestor``, so they are neither read nor copied. With
``--vocabulary_folder``/``--prompts_folder`` those parts go to folders of their
own (one Kubeflow artifact each), each published by its own rename.

Values (on unless ``--no_values``): measurement and observation rows keep their number (a bin token
``v:<k>`` after the concept, per-concept quantile bins learned on the training split only), or their
categorical value (``vc:<concept id>``); drug exposures their duration (``dur:<days>``). What is kept
and dropped is :mod:`cehrgpt.data.value_tokens`'; the bins are ``value_bins.json`` beside the
vocabulary (:mod:`cehrgpt.values`), the counts the report's ``values`` section. ``--no_values`` writes
the sequences exactly as without values.

Runs on ``local[*]`` by default and unchanged under spark-submit.

A run first removes the staging folders a killed run left beside OUT (and says so), and
refuses an OUT holding files it did not write (a non-empty folder without
``prepare_report.json``, or one holding names this run does not write) unless ``--overwrite``
is given. A failing Spark job ends in one line naming a log file with the full trace (exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import date
from typing import Any

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from tqdm import tqdm

from cehrgpt import values
from cehrgpt.data import DEFAULT_TEST_FRACTION
from cehrgpt.data import events as ev
from cehrgpt.data import value_tokens as vt
from cehrgpt.data.events import (
    DEFAULT_DOMAINS,
    EVENT_DOMAINS,
    SEQUENCE_COLUMNS,
    VALUE_SEQUENCE_COLUMNS,
    VALUE_STAT_COLUMNS,
)
from cehrgpt.data.inputs import OmopInputs, read_inputs
from cehrgpt.exits import CommandParser, run_command
from cehrgpt.grammar import MAX_VALUE_BINS, PROMPT_LENGTH
from cehrgpt.omop.source import (
    OmopSource,
    OmopSourceError,
    open_omop_source,
    resolve_omop_source,
)
from cehrgpt.redaction import redact, redact_url
from cehrgpt.spark import HadoopFiles, get_spark, parent_and_name, quiet_spark_console, spark_failure

log = logging.getLogger(__name__)

REPORT_NAME = "prepare_report.json"
SEQUENCES_DIR, VOCABULARY_DIR, PROMPTS_DIR = "patient_sequence", "omop_vocab", "prompts"


class PrepareError(ValueError):
    """A bad option given to the ETL (bad OMOP data raises :class:`OmopSourceError`)."""


def _counts(df: DataFrame, *keys: str) -> dict[Any, int]:
    rows = df.groupBy(*keys).count().collect()
    if len(keys) == 1:
        return {r[keys[0]]: r["count"] for r in rows}
    return {tuple(r[k] for k in keys): r["count"] for r in rows}


def _parse_domains(domains: Sequence[str] | str) -> tuple[str, ...]:
    names = [d.strip().lower() for d in (domains.split(",") if isinstance(domains, str) else domains)]
    names = [d for d in names if d]
    unknown = [d for d in names if d not in EVENT_DOMAINS]
    if unknown or not names:
        raise PrepareError(
            f"--domains: {','.join(unknown) or '(empty)'} not understood, expected a comma-separated "
            f"subset of {','.join(EVENT_DOMAINS)}"
        )
    return tuple(dict.fromkeys(names))


def _check_options(
    test_fraction: float, min_event_date: str | None, value_bins: int, min_concept_patients: int
) -> None:
    if not 1 <= value_bins <= MAX_VALUE_BINS:
        raise PrepareError(f"--value_bins: {value_bins} is not a number of bins in 1..{MAX_VALUE_BINS}")
    if min_concept_patients < 1:
        raise PrepareError(f"--min_concept_patients: {min_concept_patients} is not a count of 1 or more")
    if not 0.0 <= test_fraction < 1.0:
        raise PrepareError(f"--test_fraction: {test_fraction} is not a fraction in [0, 1)")
    if min_event_date is not None:
        try:
            date.fromisoformat(min_event_date)
        except ValueError:
            raise PrepareError(f"--min_event_date: {min_event_date!r} is not a date YYYY-MM-DD") from None


def prepare(
    omop_source: str,
    output_folder: str,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 42,
    min_event_date: str | None = None,
    domains: Sequence[str] | str = DEFAULT_DOMAINS,
    spark: SparkSession | None = None,
    spark_master: str | None = None,
    shuffle_partitions: int | None = None,
    overwrite: bool = False,
    vocabulary_folder: str | None = None,
    prompts_folder: str | None = None,
    with_values: bool = True,
    value_bins: int = values.DEFAULT_NUM_BINS,
    min_concept_patients: int = values.DEFAULT_MIN_CONCEPT_PATIENTS,
) -> dict[str, Any]:
    """Turn an OMOP database into patient sequences, the vocabulary and a report, under ``output_folder``.

    Args:
        omop_source: a folder of parquet/CSV tables, a DuckDB file or a SQLAlchemy URL.
        output_folder: where ``patient_sequence/``, ``omop_vocab/`` and ``prepare_report.json`` go
            (replaced as a whole when the run succeeds): a path or a Hadoop URI.
        test_fraction: the share of persons put in ``test`` (unless ``patient_splits`` says otherwise);
            :data:`cehrgpt.data.DEFAULT_TEST_FRACTION` by default.
        seed: makes the train/test split reproducible.
        min_event_date: ``YYYY-MM-DD``; events before it are dropped and counted.
        domains: event domains to read (see :data:`cehrgpt.data.events.EVENT_DOMAINS`).
        spark: a session to use; by default one from :func:`cehrgpt.spark.get_spark`.
        spark_master: the master for a new session (``local[*]`` when neither this nor spark-submit says).
        shuffle_partitions: ``spark.sql.shuffle.partitions`` for a new session.
        overwrite: replace ``output_folder`` even when it holds files prepare did not write.
        vocabulary_folder: where the vocabulary goes instead of ``output_folder/omop_vocab``.
        prompts_folder: where the prompts go instead of ``output_folder/prompts``.
        with_values: value tokens after measurement/observation/drug concepts, the value columns and
            ``value_bins.json`` (False: the sequences exactly as without values).
        value_bins: bins per concept's numbers.
        min_concept_patients: the fewest training patients a concept's numbers (or a categorical value)
            need to get bins (a token).

    Returns:
        The report, as written to ``prepare_report.json``.

    Raises:
        PrepareError: a bad option, or an output folder holding files prepare did not write.
        OmopSourceError: a missing table or column, an unreadable file, a value of the wrong type.
    """
    started = time.perf_counter()
    chosen = _parse_domains(domains)
    _check_options(test_fraction, min_event_date, value_bins, min_concept_patients)
    targets = {"output_folder": output_folder}
    for flag, folder in (("vocabulary_folder", vocabulary_folder), ("prompts_folder", prompts_folder)):
        if folder is not None:
            targets[flag] = folder
    parents = {}
    for flag, folder in targets.items():
        try:
            parents[flag] = parent_and_name(folder)
        except ValueError as error:
            raise PrepareError(f"--{flag} {error}") from None
    source = open_omop_source(omop_source)
    if spark is None:
        spark = get_spark("cehrgpt-prepare", spark_master, shuffle_partitions)
        quiet_spark_console(spark)
        if shuffle_partitions is None and (spark.sparkContext.master or "").startswith("local"):
            # Spark's 200 shuffle partitions are sized for clusters; on one machine they cost more than the work.
            spark.conf.set("spark.sql.shuffle.partitions", str(local_shuffle_partitions(spark)))
    # every target is written into a hidden sibling, then renamed into place once all of them are complete
    publish = {}
    for flag, (parent, name) in parents.items():
        target_parent = HadoopFiles(spark, parent)
        remove_stale_staging(target_parent, name)
        publish[flag] = (target_parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}", name)
    files, staging, name = publish["output_folder"]
    output = HadoopFiles(spark, f"{files.root}/{name}")
    if not overwrite:
        check_output_folder(output, output_folder)
    for target_files, _, _ in publish.values():
        target_files.mkdirs()
    staged = {
        flag: f"{target.root}/{target_staging}" for flag, (target, target_staging, _) in publish.items()
    }
    try:
        report = _run(
            spark,
            source,
            staged["output_folder"],
            staged.get("vocabulary_folder", f"{staged['output_folder']}/{VOCABULARY_DIR}"),
            staged.get("prompts_folder", f"{staged['output_folder']}/{PROMPTS_DIR}"),
            chosen,
            test_fraction,
            seed,
            min_event_date,
            (value_bins, min_concept_patients) if with_values else None,
        )
        report.update(
            omop_source=_describe(omop_source),
            output_folder=output_folder,
            vocabulary_folder=vocabulary_folder or f"{output_folder.rstrip('/')}/{VOCABULARY_DIR}",
            prompts_folder=prompts_folder or f"{output_folder.rstrip('/')}/{PROMPTS_DIR}",
            options={
                "test_fraction": test_fraction,
                "seed": seed,
                "min_event_date": min_event_date,
                "domains": list(chosen),
                "values": with_values,
                "value_bins": value_bins,
                "min_concept_patients": min_concept_patients,
            },
            seconds=round(time.perf_counter() - started, 2),
        )
        persons = report["persons"]
        if persons["written"] == 0:  # later stages would fail on an empty folder (Spark: no schema to infer)
            raise PrepareError(
                f"{_describe(omop_source)}: no patients to write (the person table has {persons['read']} "
                f"rows, {persons['kept']} kept); nothing was written"
            )
        report["warnings"] = []
        if test_fraction > 0 and persons["per_split"]["test"] == 0:
            report["warnings"].append(
                f"the test split is empty: --test_fraction {test_fraction} of {persons['written']} persons "
                "put none in it; the analyses that compare with held-out patients (fidelity, utility, "
                "privacy) need some"
            )
        for warning in report["warnings"]:
            log.warning("%s", warning)
        for table in report["empty_tables"]:
            log.warning("source table %s is empty", table)
        events_kept = report["events"]["kept"]
        report["events_per_second"] = round(events_kept / max(report["seconds"], 1e-9), 1)
        files.write_text(f"{staging}/{REPORT_NAME}", json.dumps(report, indent=2, sort_keys=False) + "\n")
        if not overwrite:
            foreign = sorted(
                set(_visible(output)) - set(_visible(HadoopFiles(spark, f"{files.root}/{staging}")))
            )
            if foreign:
                raise PrepareError(
                    f"--output_folder {output_folder}: holds {foreign[0]}, which this run does not write; "
                    "remove it or give --overwrite (nothing was changed)"
                )
        for target_files, target_staging, target_name in publish.values():
            target_files.move(target_staging, target_name)
    finally:
        for target_files, target_staging, _ in publish.values():
            target_files.delete(target_staging)
    return report


def _visible(files: HadoopFiles) -> list[str]:
    return [n for n in files.children() if not n.startswith(".")]


def remove_stale_staging(files: HadoopFiles, name: str) -> None:
    """Delete the ``.<name>.tmp-*`` folders killed runs left beside the output, saying so in one line.

    Two runs into one output folder at once are not supported: the second would remove the first's.
    """
    stale = sorted(c for c in files.children() if c.startswith(f".{name}.tmp-"))
    if stale:
        log.warning(
            "removing %s in %s, left by a prepare run that did not finish", ", ".join(stale), files.root
        )
    for child in stale:
        files.delete(child)


def check_output_folder(output: HadoopFiles, output_folder: str) -> None:
    """Refuse a non-empty output folder without a ``prepare_report.json``: prepare did not write it."""
    present = sorted(_visible(output))
    if present and REPORT_NAME not in present:
        raise PrepareError(
            f"--output_folder {output_folder}: holds {present[0]} and no {REPORT_NAME}, so prepare did not "
            "write it; give an empty or new folder, or --overwrite to replace it"
        )


def local_shuffle_partitions(spark: SparkSession) -> int:
    """Shuffle partitions for a local run: two per core."""
    return max(2, 2 * spark.sparkContext.defaultParallelism)


def _describe(spec: str) -> str:
    if "://" in spec:
        return redact_url(spec)
    return spec


def _run(
    spark: SparkSession,
    source: OmopSource,
    staging: str,
    vocabulary_folder: str,
    prompts_folder: str,
    domains: tuple[str, ...],
    test_fraction: float,
    seed: int,
    min_event_date: str | None,
    value_options: tuple[int, int] | None,
) -> dict[str, Any]:
    inputs = read_inputs(spark, source, domains, with_values=value_options is not None)
    with tqdm(total=5, desc="prepare", unit="step", file=sys.stderr) as steps:
        persons = ev.tag_persons(inputs.person).persist()
        person_reasons = _counts(persons, "reason")
        kept_persons = ev.with_split(
            persons.where(F.col("reason") == ev.KEPT).drop("reason"), inputs.splits, seed, test_fraction
        )
        visits = ev.tag_visits(inputs.visit_occurrence, kept_persons).persist()
        visit_reasons = _counts(visits, "reason")
        steps.update()

        kept_visits = visits.where(F.col("reason") == ev.KEPT).drop("reason")
        union = None
        for name, table in inputs.domain_tables.items():
            part = ev.domain_events(table, EVENT_DOMAINS[name], with_values=value_options is not None)
            union = part if union is None else union.unionByName(part)
        assert union is not None
        tagged = ev.tag_events(union, kept_persons, min_event_date).persist()
        event_reasons = _counts(tagged, "table", "reason")
        bins: values.ValueBins | None = None
        left_out: dict[str, int] = {}
        if value_options is not None:
            bins, left_out = _learn_value_bins(tagged, kept_persons, *value_options)
        steps.update()

        visit_events = ev.attach_visits(tagged.where(F.col("reason") == ev.KEPT), kept_visits)
        deaths = ev.death_days(inputs.death) if inputs.death is not None else None
        person_events = ev.events_per_person(visit_events)
        if bins is None:
            sequences = ev.build_sequences(person_events, kept_persons, deaths).persist()
        else:
            coder = vt.ValueCoder(bins)
            sequences = ev.build_sequences(person_events, kept_persons, deaths, coder=coder).persist()
        stats = _sequence_stats(sequences)
        deaths_read = inputs.death.count() if inputs.death is not None else None
        steps.update()

        _write_sequences(sequences, f"{staging}/{SEQUENCES_DIR}")
        _write_prompts(sequences, prompts_folder)
        steps.update()

        vocab_rows = {
            name: _write_vocab(table, f"{vocabulary_folder}/{name}")
            for name, table in inputs.vocabulary.items()
        }
        if bins is not None:  # beside the vocabulary, staged and published with it
            HadoopFiles(spark, vocabulary_folder).write_text(
                values.VALUE_BINS_FILE, values.value_bins_text(bins)
            )
        steps.update()

    for df in (persons, visits, tagged, sequences):
        df.unpersist()
    report = _report(inputs, person_reasons, visit_reasons, event_reasons, stats, deaths_read, vocab_rows)
    report["values"] = _values_report(bins, left_out, stats)
    return report


def _learn_value_bins(
    tagged: DataFrame, kept_persons: DataFrame, num_bins: int, min_concept_patients: int
) -> tuple[values.ValueBins, dict[str, int]]:
    """The bins learned from the kept events with a value of the persons in the training split only."""
    train = kept_persons.where(F.col("split") == "train").select("person_id")
    has_value = F.lit(False)
    for column in vt.VALUE_COLUMNS:
        has_value = has_value | F.col(column).isNotNull()
    training = (
        tagged.where((F.col("reason") == ev.KEPT) & has_value)
        .select("person_id", "concept_id", *vt.VALUE_COLUMNS)
        .join(train, on="person_id", how="left_semi")
        .persist()
    )
    try:
        return vt.learn_value_bins(training, num_bins, min_concept_patients)
    finally:
        training.unpersist()


def _values_report(
    bins: values.ValueBins | None, left_out: dict[str, int], stats: dict[str, Any]
) -> dict[str, Any]:
    """The report's ``values`` section: tokens written, bins learned, values dropped and why."""
    if bins is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "num_bins": bins.num_bins,
        "min_concept_patients": bins.min_concept_patients,
        "tokens_written": {c: stats[f"value_tokens_{c}"] for c in vt.VALUE_CLASSES},
        "concepts_with_bins": len(bins.numbers),
        "concepts_without_bins": left_out["concepts_without_bins"],
        "categories_with_token": sum(len(v) for v in bins.categories.values()),
        "categories_without_token": left_out["categories_without_token"],
        "duration_bins_with_median": len(bins.duration_days),
        "dropped": {r: stats[f"values_{r}"] for r in vt.DROP_REASONS},
        "training_values_with_another_unit": sum(b.other_unit_values for b in bins.numbers.values()),
    }


def _report(
    inputs: OmopInputs,
    person_reasons: dict[str, int],
    visit_reasons: dict[str, int],
    event_reasons: dict[tuple[str, str], int],
    stats: dict[str, Any],
    deaths_read: int | None,
    vocab_rows: dict[str, int],
) -> dict[str, Any]:
    """The report's body: what was read, kept, dropped (and why), invented and written."""
    tables_read: dict[str, int] = {
        "person": sum(person_reasons.values()),
        "visit_occurrence": sum(visit_reasons.values()),
    }
    events_by_table: dict[str, dict[str, int]] = {}
    for (table_name, reason), n in sorted(event_reasons.items()):
        events_by_table.setdefault(table_name, {})[reason] = n
    for name in inputs.domain_tables:
        table_name = EVENT_DOMAINS[name].table
        events_by_table.setdefault(table_name, {})
        tables_read[table_name] = sum(events_by_table[table_name].values())
    if deaths_read is not None:
        tables_read["death"] = deaths_read
    kept_events = sum(r.get(ev.KEPT, 0) for r in events_by_table.values())
    persons_with_visits = stats["persons"]
    real_visits_used = stats["visits"] - stats["artificial_visits"]
    empty_visits = visit_reasons.get(ev.KEPT, 0) - real_visits_used
    return {
        "tables_read": tables_read,
        "empty_tables": sorted(name for name, rows in tables_read.items() if rows == 0),
        "tables_treated_as_absent": inputs.absent,
        "rows_in_unusable_tables": inputs.unusable_rows,
        "persons": {
            "read": sum(person_reasons.values()),
            "kept": person_reasons.get(ev.KEPT, 0),
            "dropped": {k: v for k, v in sorted(person_reasons.items()) if k != ev.KEPT},
            "dropped_without_events": person_reasons.get(ev.KEPT, 0) - persons_with_visits,
            "written": persons_with_visits,
            "per_split": stats["per_split"],
        },
        "visits": {
            "read": sum(visit_reasons.values()),
            "kept": real_visits_used,
            "dropped": {k: v for k, v in sorted(visit_reasons.items()) if k != ev.KEPT},
            "dropped_empty": empty_visits,
            "artificial_visits": stats["artificial_visits"],
            "written": stats["visits"],
            "negative_gaps_clipped": stats["negative_gaps"],
        },
        "events": {
            "kept": kept_events,
            "by_table": {
                t: {"read": sum(r.values()), "kept": r.get(ev.KEPT, 0)}
                | {"dropped": {k: v for k, v in r.items() if k != ev.KEPT}}
                for t, r in events_by_table.items()
            },
            "orphans_in_artificial_visits": stats["orphan_events"],
        },
        "deaths": {
            "written": stats["deaths"],
            "before_last_visit": stats["deaths_before_last_visit"],
        },
        "tokens_written": stats["tokens"],
        "vocabulary_rows": vocab_rows,
    }


def _write_vocab(table: DataFrame, path: str) -> int:
    """Write one vocabulary table; its rows are counted while writing (no second Spark job)."""
    rows = Observation("rows")
    table.observe(rows, F.count(F.lit(1)).alias("rows")).write.mode("overwrite").parquet(path)
    return int(rows.get["rows"])


_STAT_COLUMNS = (
    "num_of_visits",
    "num_of_concepts",
    "negative_gaps",
    "artificial_visits",
    "orphan_events",
)


def _sequence_stats(sequences: DataFrame) -> dict[str, Any]:
    """Persons, visits, tokens, clipped gaps, artificial visits, deaths and values written, in one Spark job."""
    value_stats = [c for c in VALUE_STAT_COLUMNS if c in sequences.columns]
    rows = (
        sequences.groupBy("split")
        .agg(
            F.count(F.lit(1)).alias("persons"),
            *[F.sum(c).alias(c) for c in (*_STAT_COLUMNS, *value_stats)],
            F.sum(F.col("has_death").cast("long")).alias("deaths"),
            F.sum(F.col("death_before_last_visit").cast("long")).alias("deaths_before_last_visit"),
        )
        .collect()
    )
    total = {"persons": 0, "deaths": 0, "deaths_before_last_visit": 0}
    total |= {c: 0 for c in (*_STAT_COLUMNS, *value_stats)}
    for row in rows:
        for key in total:
            total[key] += row[key] or 0
    stats: dict[str, Any] = {
        "persons": total["persons"],
        "visits": total["num_of_visits"],
        "tokens": total["num_of_concepts"],
        "negative_gaps": total["negative_gaps"],
        "artificial_visits": total["artificial_visits"],
        "orphan_events": total["orphan_events"],
        "deaths": total["deaths"],
        "deaths_before_last_visit": total["deaths_before_last_visit"],
    } | {c: total[c] for c in value_stats}
    per_split = {row["split"]: row["persons"] for row in rows}
    stats["per_split"] = {"train": per_split.get("train", 0), "test": per_split.get("test", 0)}
    return stats


def _write_sequences(sequences: DataFrame, folder: str) -> None:
    """``folder/train`` and ``folder/test`` in one Spark job; an empty split still gets a schema-only file."""
    names = SEQUENCE_COLUMNS + [c for c in VALUE_SEQUENCE_COLUMNS if c in sequences.columns]
    columns = sequences.select(*names)
    sequences.select(*names, "split").write.partitionBy("split").parquet(f"{folder}/_by_split")
    files = HadoopFiles(sequences.sparkSession, folder)
    for split in ("train", "test"):
        if files.exists(f"_by_split/split={split}"):
            files.move(f"_by_split/split={split}", split)
        else:
            sequences.sparkSession.createDataFrame([], columns.schema).write.parquet(f"{folder}/{split}")
    files.delete("_by_split")


def _write_prompts(sequences: DataFrame, folder: str) -> None:
    """The training sequences' first :data:`~cehrgpt.grammar.PROMPT_LENGTH` tokens (shorter ones whole)."""
    train = sequences.where(F.col("split") == "train")
    train.select(F.slice("concept_ids", 1, PROMPT_LENGTH).alias("concept_ids")).coalesce(1).write.parquet(
        folder
    )


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m cehrgpt.data.prepare",
        description="OMOP CDM -> CEHR-GPT patient sequences (train/test parquet), vocabulary and a report.",
    )
    parser.add_argument(
        "--omop_source",
        default="",
        help="folder (parquet/CSV), DuckDB file or SQLAlchemy URL (default: $CEHRGPT_OMOP_URL); "
        "a URL without a password gets $CEHRGPT_OMOP_PASSWORD",
    )
    parser.add_argument("--output_folder", required=True)
    parser.add_argument(
        "--vocabulary_folder", default=None, help="the vocabulary's own folder (default OUT/omop_vocab)"
    )
    parser.add_argument(
        "--prompts_folder", default=None, help="the prompts' own folder (default OUT/prompts)"
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help=f"share of persons held out as the test split (default: {DEFAULT_TEST_FRACTION}, as in the pipelines)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--min_event_date", default=None, help="YYYY-MM-DD; earlier events are dropped")
    parser.add_argument("--spark_master", default=None, help="default: spark-submit's master, else local[*]")
    parser.add_argument(
        "--domains",
        default=",".join(DEFAULT_DOMAINS),
        help=f"comma-separated subset of {','.join(EVENT_DOMAINS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--shuffle_partitions",
        type=int,
        default=None,
        help="spark.sql.shuffle.partitions (default: two per core in local mode, Spark's setting otherwise)",
    )
    parser.add_argument(
        "--no_values",
        action="store_true",
        help="no value tokens (numbers, categorical values, drug durations), value columns or value_bins.json",
    )
    parser.add_argument(
        "--value_bins",
        type=int,
        default=values.DEFAULT_NUM_BINS,
        help="quantile bins per concept's numbers, learned on the training split (default: %(default)s)",
    )
    parser.add_argument(
        "--min_concept_patients",
        type=int,
        default=values.DEFAULT_MIN_CONCEPT_PATIENTS,
        help="a concept's numbers (a categorical value) seen in fewer training patients get no bins "
        "(no token) (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output_folder even when it holds files prepare did not write",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        report = prepare(
            resolve_omop_source(args.omop_source),
            args.output_folder,
            test_fraction=args.test_fraction,
            seed=args.seed,
            min_event_date=args.min_event_date,
            domains=args.domains,
            spark_master=args.spark_master,
            shuffle_partitions=args.shuffle_partitions,
            overwrite=args.overwrite,
            vocabulary_folder=args.vocabulary_folder,
            prompts_folder=args.prompts_folder,
            with_values=not args.no_values,
            value_bins=args.value_bins,
            min_concept_patients=args.min_concept_patients,
        )
        persons = report["persons"]["per_split"]
        print(
            f"wrote {persons['train']} train and {persons['test']} test patients, "
            f"{report['events']['kept']} events, to {args.output_folder}"
        )
        return 0

    def describe(error: BaseException) -> str:
        if isinstance(
            error, (Py4JError, PySparkException)
        ):  # a Spark job failed: one line, the trace in a log
            source = redact(args.omop_source or "the OMOP source")
            return f"prepare of {source} failed: {redact(spark_failure(error, 'prepare'))}"
        return redact(str(error))

    return run_command(body, PrepareError, OmopSourceError, Py4JError, PySparkException, describe=describe)


if __name__ == "__main__":
    raise SystemExit(main())
