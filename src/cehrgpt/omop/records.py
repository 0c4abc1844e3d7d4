"""Arrow record adapters of the restore job: decoded patients as one long-format record batch.

Inside ``mapInArrow`` :func:`decode_batches` decodes each input batch (grammar-valid
patients with the vectorised :func:`cehrgpt.omop.arrow_decode.decode_arrow`, the rest with the
reference :func:`cehrgpt.omop.decode.decode_patient`) and turns what they return into
batches of :data:`DECODED_SCHEMA`: one row per person, visit, event, death, rejected
token, and a per-patient tally for the report. Events are sent to the table of their
concept's vocabulary domain here (:func:`classify`), and their value tokens become that
row's value columns or rejections (:func:`cehrgpt.omop.event_values.event_values`); the CDM
tables are cut from these records by :mod:`cehrgpt.omop.tables`.

Ids (every ``*_occurrence_id``, ``*_exposure_id``, ``measurement_id``, ``observation_id``)
are ``run << (ROW_BITS + POSITION_BITS) | input row << POSITION_BITS | token position``;
:mod:`cehrgpt.omop.restore` documents the layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cehrgpt.dates import MAX_DAY
from cehrgpt.omop.arrow_decode import ArrowDecoded, decode_arrow
from cehrgpt.omop.decode import DecodedPatient, Reason, Rejection, decode_patient
from cehrgpt.omop.event_values import ValueLookup, event_values

EVENT_TABLES = {
    "condition": "condition_occurrence",
    "drug": "drug_exposure",
    "procedure": "procedure_occurrence",
    "measurement": "measurement",
    "observation": "observation",
    "device": "device_exposure",
}
EVENT_TABLE_NAMES = tuple(EVENT_TABLES.values())

PERSON, VISIT, EVENT, DEATH, REJECTION, TALLY = range(6)

# id = run << (ROW_BITS + POSITION_BITS) | input row << POSITION_BITS | token position (:mod:`cehrgpt.omop.restore`)
POSITION_BITS = 18  # tokens per sequence
ROW_BITS = 22  # input rows (patients) per restore
RUN_BITS = 63 - ROW_BITS - POSITION_BITS  # 23: every generation seed (up to sharding.MAX_SEED) is a run

DECODED_SCHEMA = pa.schema(
    [
        ("record", pa.int8()),
        ("person_id", pa.int64()),
        ("position", pa.int32()),
        ("record_id", pa.int64()),  # visit_occurrence_id or event id
        ("concept_id", pa.int64()),  # gender, visit concept or event concept
        ("concept_id_2", pa.int64()),  # race or discharged_to
        ("year_of_birth", pa.int64()),
        ("start_date", pa.date32()),
        ("end_date", pa.date32()),  # a visit's end; a drug exposure's end when it has a duration
        ("parent_id", pa.int64()),  # an event's visit, a visit's preceding visit
        ("token", pa.string()),  # a rejected token; an event's token when it is not its concept id
        ("reason", pa.string()),  # a rejection's reason; a tally's patient-level reason
        ("count", pa.int64()),  # a tally's structural tokens
        ("tokens", pa.int64()),  # a tally's input tokens
        ("table", pa.int8()),  # an event's table: an index into EVENT_TABLE_NAMES
        ("value_as_number", pa.float64()),  # an event's value (event_values)
        ("unit_concept_id", pa.int64()),
        ("value_as_concept_id", pa.int64()),
        ("days_supply", pa.int64()),  # a drug exposure's duration
    ]
)


def _record_batch(record: int, columns: dict[str, Any]) -> pa.RecordBatch:
    """One kind of record as a batch of :data:`DECODED_SCHEMA`; absent columns are null."""
    n = len(next(iter(columns.values())))
    arrays = []
    for field in DECODED_SCHEMA:
        if field.name == "record":
            arrays.append(pa.array(np.full(n, record, np.int8)))
        elif field.name in columns:
            values = columns[field.name]
            if isinstance(values, pa.Array):
                arrays.append(values.cast(field.type))
            elif pa.types.is_date32(field.type):
                arrays.append(pa.array(values, pa.int32()).cast(pa.date32()))
            else:
                arrays.append(pa.array(values, field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=DECODED_SCHEMA)


def _or_null(values: np.ndarray) -> pa.Array:
    """int64 values with -1 meaning none."""
    return pa.array(values, pa.int64(), mask=values < 0)


def _nan_null(values: np.ndarray) -> pa.Array:
    """float64 values with NaN meaning none."""
    return pa.array(values, pa.float64(), mask=np.isnan(values))


NOT_IN_VOCABULARY, UNSUPPORTED = -2, -1


def classify(concept_ids: np.ndarray, vocabulary: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each concept's event table (index into :data:`EVENT_TABLE_NAMES`), or a negative reason code.

    Args:
        concept_ids: the events' concepts.
        vocabulary: sorted concept ids and, for each, its table index or :data:`UNSUPPORTED`.
    """
    ids, tables = vocabulary
    if len(ids) == 0:
        return np.full(len(concept_ids), NOT_IN_VOCABULARY, np.int8)
    at = np.minimum(np.searchsorted(ids, concept_ids), len(ids) - 1)
    return np.where(ids[at] == concept_ids, tables[at], NOT_IN_VOCABULARY).astype(np.int8)


def _split_events(
    columns: dict[str, Any],
    tokens: np.ndarray,
    vocabulary: tuple[np.ndarray, np.ndarray],
    values: ValueLookup | None = None,
) -> Iterator[pa.RecordBatch]:
    """Events as EVENT records with their table and value columns; those the vocabulary cannot place,
    and value tokens that do not fit their event (:func:`event_values`), as rejections.

    ``columns`` holds ``value_position`` (-1: no value token) and ``value_token`` beside the event's own.
    """
    value_positions = np.asarray(columns.pop("value_position"), np.int64)
    value_tokens = np.asarray(columns.pop("value_token"), object)
    concept_ids = np.asarray(columns["concept_id"], np.int64)
    tables = classify(concept_ids, vocabulary)
    placed = tables >= 0
    person_ids = np.asarray(columns["person_id"], np.int64)
    resolved = event_values(
        person_ids, concept_ids, tables, EVENT_TABLE_NAMES, value_positions, value_tokens, values
    )
    if placed.any():
        event = {k: np.asarray(v)[placed] for k, v in columns.items()}
        event["token"] = np.where(concept_ids[placed] == 0, tokens[placed], np.array(None, object))
        event["table"] = tables[placed]
        event["value_as_number"] = _nan_null(resolved.value_as_number[placed])
        event["unit_concept_id"] = _or_null(resolved.unit_concept_id[placed])
        event["value_as_concept_id"] = _or_null(resolved.value_as_concept_id[placed])
        days = resolved.days_supply[placed]
        event["days_supply"] = _or_null(days)
        start = np.asarray(event["start_date"], np.int64)
        event["end_date"] = pa.array(
            np.minimum(start + np.maximum(days, 0), MAX_DAY), pa.int32(), mask=days < 0
        ).cast(pa.date32())
        yield _record_batch(EVENT, event)
    bad_value = np.flatnonzero(resolved.rejected.astype(bool))  # a reason, or None
    if len(bad_value):
        yield _record_batch(
            REJECTION,
            {
                "person_id": person_ids[bad_value],
                "position": value_positions[bad_value],
                "token": value_tokens[bad_value],
                "reason": resolved.rejected[bad_value],
            },
        )
    if not placed.all():
        reasons = np.where(
            tables[~placed] == NOT_IN_VOCABULARY,
            Reason.CONCEPT_NOT_IN_VOCABULARY.value,
            Reason.UNSUPPORTED_DOMAIN.value,
        )
        yield _record_batch(
            REJECTION,
            {
                "person_id": np.asarray(columns["person_id"])[~placed],
                "position": np.asarray(columns["position"])[~placed],
                "token": tokens[~placed],
                "reason": reasons,
            },
        )


def _fast_records(
    fast: ArrowDecoded,
    person_ids: np.ndarray,
    bases: np.ndarray,
    lengths: np.ndarray,
    vocabulary: tuple[np.ndarray, np.ndarray],
    values: ValueLookup | None = None,
) -> Iterator[pa.RecordBatch]:
    """The records of the patients the vectorised decoder handled."""
    p, v, e, d = fast.person, fast.visit, fast.event, fast.death
    if len(p["row"]):
        yield _record_batch(
            PERSON,
            {
                "person_id": person_ids[p["row"]],
                "concept_id": p["gender_concept_id"],
                "concept_id_2": p["race_concept_id"],
                "year_of_birth": p["year_of_birth"],
            },
        )
        yield _record_batch(
            TALLY,
            {"person_id": person_ids[p["row"]], "count": p["structural"], "tokens": lengths[p["row"]]},
        )
    if len(v["row"]):
        base = bases[v["row"]]
        yield _record_batch(
            VISIT,
            {
                "person_id": person_ids[v["row"]],
                "position": v["position"],
                "record_id": base + v["position"],
                "concept_id": v["visit_concept_id"],
                "concept_id_2": _or_null(v["discharged_to_concept_id"]),
                "start_date": v["start_day"],
                "end_date": v["end_day"],
                "parent_id": _or_null(
                    np.where(v["preceding_position"] < 0, -1, base + v["preceding_position"])
                ),
            },
        )
    if len(e["row"]):
        base = bases[e["row"]]
        yield from _split_events(
            {
                "person_id": person_ids[e["row"]],
                "position": e["position"],
                "record_id": base + e["position"],
                "concept_id": e["concept_id"],
                "start_date": e["day"],
                "parent_id": base + e["visit_position"],
                "value_position": e["value_position"],
                "value_token": e["value_token"],
            },
            e["token"],
            vocabulary,
            values,
        )
    if len(d["row"]):
        yield _record_batch(
            DEATH, {"person_id": person_ids[d["row"]], "position": d["position"], "start_date": d["day"]}
        )


def _append(columns: dict[str, list[Any]], **values: Any) -> None:
    for name, value in values.items():
        columns[name].append(value)


def _slow_records(
    patients: list[tuple[int | None, list[str] | None, int, bool]],
    vocabulary: tuple[np.ndarray, np.ndarray],
    end_day: int = MAX_DAY,
    values: ValueLookup | None = None,
) -> Iterator[pa.RecordBatch]:
    """The records of patients decoded one by one: (person_id, tokens, id base, duplicate)."""
    columns: dict[int, dict[str, list[Any]]] = {
        PERSON: {k: [] for k in ("person_id", "concept_id", "concept_id_2", "year_of_birth")},
        VISIT: {
            k: []
            for k in (
                "person_id",
                "position",
                "record_id",
                "concept_id",
                "concept_id_2",
                "start_date",
                "end_date",
                "parent_id",
            )
        },
        EVENT: {
            k: []
            for k in (
                "person_id",
                "position",
                "record_id",
                "concept_id",
                "start_date",
                "parent_id",
                "token",
                "value_position",
                "value_token",
            )
        },
        DEATH: {k: [] for k in ("person_id", "position", "start_date")},
        REJECTION: {k: [] for k in ("person_id", "position", "token", "reason")},
        TALLY: {k: [] for k in ("person_id", "reason", "count", "tokens")},
    }
    for person_id, tokens, base, duplicate in patients:
        tokens = tokens or []
        if len(tokens) >= 1 << POSITION_BITS:
            out = DecodedPatient(
                rejections=[Rejection(i, t, Reason.SEQUENCE_TOO_LONG) for i, t in enumerate(tokens)]
            )
        else:
            out = decode_patient(person_id, tokens, duplicate=duplicate, end_day=end_day)
        if out.person is not None:
            _append(
                columns[PERSON],
                person_id=person_id,
                concept_id=out.person.gender_concept_id,
                concept_id_2=out.person.race_concept_id,
                year_of_birth=out.person.year_of_birth,
            )
        for visit in out.visits:
            _append(
                columns[VISIT],
                person_id=person_id,
                position=visit.position,
                record_id=base + visit.position,
                concept_id=visit.visit_concept_id,
                concept_id_2=visit.discharged_to_concept_id,
                start_date=visit.start_day,
                end_date=visit.end_day,
                parent_id=None if visit.preceding_position is None else base + visit.preceding_position,
            )
        for event in out.events:
            _append(
                columns[EVENT],
                person_id=person_id,
                position=event.position,
                record_id=base + event.position,
                concept_id=event.concept_id,
                start_date=event.day,
                parent_id=base + event.visit_position,
                token=tokens[event.position],
                value_position=-1 if event.value_position is None else event.value_position,
                value_token=event.value_token,
            )
        if out.death is not None:
            _append(
                columns[DEATH], person_id=person_id, position=out.death.position, start_date=out.death.day
            )
        for rejection in out.rejections:
            _append(
                columns[REJECTION],
                person_id=person_id,
                position=rejection.position,
                token=rejection.token,
                reason=rejection.reason.value,
            )
        patient_reason = None
        if out.person is None:
            patient_reason = out.rejections[0].reason.value if out.rejections else Reason.BAD_PROMPT.value
        _append(
            columns[TALLY],
            person_id=person_id,
            reason=patient_reason,
            count=out.structural,
            tokens=len(tokens),
        )
    events = columns.pop(EVENT)
    if events["person_id"]:
        yield from _split_events(events, np.array(events.pop("token"), object), vocabulary, values)
    for record, record_columns in columns.items():
        if record_columns["person_id"]:
            yield _record_batch(record, record_columns)


def decode_batches(
    batches: Iterator[pa.RecordBatch],
    first_row: dict[str, int],
    duplicates: frozenset[tuple[str, int]],
    vocabulary: tuple[np.ndarray, np.ndarray],
    run: int = 0,
    end_day: int = MAX_DAY,
    values: ValueLookup | None = None,
) -> Iterator[pa.RecordBatch]:
    """Decode Arrow batches of sequences into the long-format records the tables are cut from.

    Grammar-valid patients go through :func:`cehrgpt.omop.arrow_decode.decode_arrow` all at
    once; the rest (and any duplicate or id-less row) through :func:`decode_patient`.

    Args:
        batches: ``person_id``, ``concept_ids``, ``file_path``, ``row_index``.
        first_row: each input file's first row among all input rows (files sorted by path).
        duplicates: (file, row) of rows whose person_id an earlier row already has.
        vocabulary: see :func:`classify`.
        run: the ids' run component (:func:`cehrgpt.omop.inputs.id_run`).
        end_day: the last epoch day a record may carry (:func:`cehrgpt.omop.decode.decode_patient`).
        values: the value bins (:func:`cehrgpt.omop.event_values.value_lookup`); None: every value
            token is rejected (``value_does_not_fit``).
    """
    for batch in batches:
        n = batch.num_rows
        sequences = batch.column("concept_ids")
        person_column = batch.column("person_id")
        has_person = ~np.asarray(person_column.is_null().to_numpy(zero_copy_only=False), bool)
        person_ids = pc.fill_null(person_column, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        files = [file_key(f) for f in batch.column("file_path").to_pylist()]
        rows = batch.column("row_index").to_numpy(zero_copy_only=False).astype(np.int64)
        unknown = set(files) - first_row.keys()
        if unknown:
            raise ValueError(f"input file {sorted(unknown)[0]} was not listed when the job started")
        input_rows = np.array([first_row[f] for f in files], np.int64) + rows
        if n and int(input_rows.max()) >= 1 << ROW_BITS:
            raise ValueError(
                f"more than {1 << ROW_BITS} input rows; restore them in parts with distinct --id_offset"
            )
        bases = (np.int64(run) << (ROW_BITS + POSITION_BITS)) + (input_rows << POSITION_BITS)
        lengths = (
            pc.fill_null(pc.list_value_length(sequences), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        )
        duplicate = (
            np.array([(f, int(r)) in duplicates for f, r in zip(files, rows, strict=True)], bool)
            if (duplicates)
            else np.zeros(n, bool)
        )
        usable = has_person & ~duplicate & (lengths < 1 << POSITION_BITS)
        fast = decode_arrow(sequences, usable, end_day)
        yield from _fast_records(fast, person_ids, bases, lengths, vocabulary, values)
        slow = np.flatnonzero(~fast.decoded)
        if len(slow):
            slow_sequences = sequences.take(pa.array(slow)).to_pylist()
            yield from _slow_records(
                [
                    (int(person_ids[r]) if has_person[r] else None, tokens, int(bases[r]), bool(duplicate[r]))
                    for r, tokens in zip(slow, slow_sequences, strict=True)
                ],
                vocabulary,
                end_day,
                values,
            )


def file_key(path: str) -> str:
    """One spelling of an input file's URI, whichever Spark API reported it."""
    return unquote(path).replace("file:///", "file:/")
