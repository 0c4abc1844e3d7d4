"""Splitting one generation run across pods, and the person ids that keep shards and runs apart.

Person id layout (64-bit signed, always positive)::

    person_id = seed * 2**40 + global_patient_index + 1

``global_patient_index`` counts patients across all shards of one run
(shard ``i`` owns the contiguous range given by :func:`plan_shards`), so shards
never collide; the seed (0 <= seed < 2**23) occupies the high bits, so two runs
with different seeds into one output folder never collide either. A run with the
same seed is the same run: it regenerates the same patients, and a restarted
shard skips the files it already wrote (see :mod:`cehrgpt.generation.runner`).
"""

from __future__ import annotations

PATIENT_INDEX_BITS = 40
MAX_SEED = 2**23 - 1
MAX_PATIENTS_PER_RUN = 2**PATIENT_INDEX_BITS - 1
# the restore numbers a row's tokens in 18 bits (cehrgpt.omop.records.POSITION_BITS): no patient may be longer
MAX_PATIENT_TOKENS = 2**18


def plan_shards(num_of_patients: int, num_shards: int) -> list[dict]:
    """Split ``num_of_patients`` over ``num_shards`` pods, sizes differing by at most one and summing exactly.

    Args:
        num_of_patients: patients the whole run must produce.
        num_shards: parallel pods.

    Returns:
        One dict per shard: ``{"shard_index", "num_shards", "num_of_patients"}``.

    Raises:
        ValueError: when either count is not positive.
    """
    if num_of_patients < 1:
        raise ValueError(f"num_of_patients must be at least 1, got {num_of_patients}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    base, extra = divmod(num_of_patients, num_shards)
    return [
        {"shard_index": i, "num_shards": num_shards, "num_of_patients": base + (1 if i < extra else 0)}
        for i in range(num_shards)
    ]


def shard_range(num_of_patients: int, shard_index: int, num_shards: int) -> range:
    """The global patient indices one shard owns.

    Raises:
        ValueError: when ``shard_index`` is not in ``[0, num_shards)``.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    plan = plan_shards(num_of_patients, num_shards)
    start = sum(s["num_of_patients"] for s in plan[:shard_index])
    return range(start, start + plan[shard_index]["num_of_patients"])


def file_ranges(patients: range, buffer_size: int) -> list[range]:
    """Cut a shard's patients into output files of ``buffer_size`` patients (the last may be shorter)."""
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
    return [patients[i : i + buffer_size] for i in range(0, len(patients), buffer_size)]


def person_id(seed: int, global_patient_index: int) -> int:
    """The person id of one generated patient (see the module docstring for the layout)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}] to fit the person_id layout, got {seed}")
    if not 0 <= global_patient_index < MAX_PATIENTS_PER_RUN:
        raise ValueError(f"patient index {global_patient_index} does not fit in {PATIENT_INDEX_BITS} bits")
    return (seed << PATIENT_INDEX_BITS) + global_patient_index + 1
