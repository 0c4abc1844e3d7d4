"""The one featurisation every analysis shares, and chunked nearest-neighbour kernels on it.

A patient becomes ``[age scaled to 0..1, one-hot gender, one-hot race, binary
presence of each clinical concept]``. The age scale is fitted once over every
set an analysis compares (training, held-out and synthetic alike), so a
patient's vector does not depend on which set it sits in.

Distances are squared Euclidean, which on the binary part is the Hamming
distance ``|a| + |b| - 2 a·b``. Nearest neighbours are found one chunk of query
rows at a time with a matrix product: memory is ``chunk_size × len(reference)``,
never ``n²``, and no Python loop runs over pairs. The frequent concept columns
(up to ``DENSE_COLUMNS``) go through one dense BLAS product, the rare ones
through a sparse product; the age rides in the same product as an extra column.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cehrgpt import grammar
from cehrgpt.grammar import TokenKind

DEFAULT_CHUNK_SIZE = 512
TIMELINE_SHINGLE_TOKENS = 3  # tokens per timeline shingle (see timeline_shingles)
DENSE_COLUMNS = 1024  # the most frequent concept columns multiplied densely; the rest sparsely
_DISTANCE_DECIMALS = 9  # rounds away float noise so that equal distances compare equal


def timeline_shingles(content: Sequence[str]) -> list[int]:
    """A patient's timeline as a multiset of overlapping token triples, each an int in this process.

    ``content`` is the clinical content after the prompt (:func:`cehrgpt.grammar.clinical_content`
    without its 4 prompt tokens): the visits, gaps and death. The prompt's year, age, gender and race
    are features of their own, so the calendar is not in the timeline and nothing is counted twice.
    Each run of :data:`TIMELINE_SHINGLE_TOKENS` consecutive tokens is one shingle, numbered by its
    occurrence (the second ``[VE] D0 [VS]`` differs from the first), so repeats count and two
    patients share as many shingles as their multisets do. Shingles see the order of visits,
    their types, the gaps between them and the concepts in each: one edit (a concept dropped or
    replaced, a gap changed) changes at most three shingles; a prefix shares all of its own.

    Value tokens are left out (:func:`value_shingles` counts them): a memorised patient whose lab
    values the model redraws keeps its timeline, so the near-copy measure still sees it.

    The ints are Python hashes: equal across the sets parsed in one process, not across processes.
    """
    content = [t for t in content if not grammar.value_class(t)]
    seen: dict[tuple[str, ...], int] = {}
    shingles = []
    n = TIMELINE_SHINGLE_TOKENS
    for start in range(len(content) - n + 1):
        gram = tuple(content[start : start + n])
        occurrence = seen.get(gram, 0)
        seen[gram] = occurrence + 1
        shingles.append(hash((gram, occurrence)))
    return shingles


def value_shingles(content: Sequence[str]) -> list[int]:
    """A patient's values as a multiset of (concept, value token) pairs, each an int in this process: what
    the distance analyses see of values (a lab's bin, a categorical result, a drug's duration) beside the
    timeline; numbered by occurrence like :func:`timeline_shingles`."""
    seen: dict[tuple[str, str], int] = {}
    shingles = []
    for previous, token in itertools.pairwise(content):
        if grammar.value_class(token):
            occurrence = seen.get((previous, token), 0)
            seen[(previous, token)] = occurrence + 1
            shingles.append(hash(("value", previous, token, occurrence)))
    return shingles


@dataclass(frozen=True)
class PatientSet:
    """Patients reduced to what the analyses compare: prompt demographics, clinical concepts, timeline.

    ``concept_values[concept_indptr[i]:concept_indptr[i + 1]]`` are patient
    ``i``'s distinct clinical concept ids (kind CONCEPT), sorted;
    ``timeline_values[timeline_indptr[i]:timeline_indptr[i + 1]]`` its distinct
    :func:`timeline_shingles`, sorted. Sets built from decoded OMOP records (the
    utility analysis) have no prompt year and no timeline (None).
    """

    person_ids: np.ndarray  # int64
    ages: np.ndarray  # float64, age in years at the first event (the prompt's age token)
    genders: np.ndarray  # int64 gender concept id, 0 for unknown
    races: np.ndarray  # int64 race concept id, 0 for unknown
    concept_indptr: np.ndarray  # int64, n + 1
    concept_values: np.ndarray  # int64
    excluded: int = 0  # rows of the source that were not whole, valid patients
    exclusion_reasons: dict[str, int] = field(default_factory=dict)
    source_rows: np.ndarray | None = None  # int64: each patient's row in the parsed frame (None after take)
    years: np.ndarray | None = None  # int64 prompt year (calendar year of the first visit)
    timeline_indptr: np.ndarray | None = None  # int64, n + 1
    timeline_values: np.ndarray | None = None  # int64
    value_indptr: np.ndarray | None = None  # int64, n + 1: distinct value_shingles per patient
    value_values: np.ndarray | None = None  # int64

    def __len__(self) -> int:
        return len(self.person_ids)

    def concepts_of(self, i: int) -> np.ndarray:
        return self.concept_values[self.concept_indptr[i] : self.concept_indptr[i + 1]]

    def num_concepts(self) -> np.ndarray:
        """Distinct clinical concepts per patient."""
        return np.diff(self.concept_indptr)

    def take(self, indices: np.ndarray) -> PatientSet:
        """The patients at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        concept_indptr, concept_values = _take_ragged(self.concept_indptr, self.concept_values, indices)
        timeline_indptr = timeline_values = value_indptr = value_values = None
        if self.timeline_indptr is not None and self.timeline_values is not None:
            timeline_indptr, timeline_values = _take_ragged(
                self.timeline_indptr, self.timeline_values, indices
            )
        if self.value_indptr is not None and self.value_values is not None:
            value_indptr, value_values = _take_ragged(self.value_indptr, self.value_values, indices)
        return PatientSet(
            person_ids=self.person_ids[indices],
            ages=self.ages[indices],
            genders=self.genders[indices],
            races=self.races[indices],
            concept_indptr=concept_indptr,
            concept_values=concept_values,
            years=None if self.years is None else self.years[indices],
            timeline_indptr=timeline_indptr,
            timeline_values=timeline_values,
            value_indptr=value_indptr,
            value_values=value_values,
        )

    def concept_universe(self) -> np.ndarray:
        return np.unique(self.concept_values)

    def concept_prevalence(self) -> pd.Series:
        """Share of patients having each concept, indexed by concept id, most prevalent first."""
        ids, counts = np.unique(self.concept_values, return_counts=True)
        series = pd.Series(counts / max(len(self), 1), index=pd.Index(ids, name="concept_id"))
        order = np.lexsort((series.index.to_numpy(), -series.to_numpy()))
        return series.iloc[order]


def _take_ragged(
    indptr: np.ndarray, values: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``indices`` of a ragged array (``values[indptr[i]:indptr[i + 1]]`` is row i)."""
    starts = indptr[indices]
    lengths = indptr[indices + 1] - starts
    new_indptr = np.zeros(len(indices) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    gather = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(new_indptr[-1], dtype=np.int64)
    return new_indptr, values[gather]


def _whole_patient(kinds: Sequence[TokenKind]) -> str | None:
    """Why a kind sequence is not one whole patient under the grammar, or None when it is."""
    state = grammar.GrammarState.PROMPT_YEAR
    for kind in kinds:
        nxt = grammar.step(state, kind)
        if nxt is None:
            return f"{kind.name.lower()} not allowed in state {state.name.lower()}"
        state = nxt
    if state not in grammar.CLOSED_STATES:
        return f"sequence ends in state {state.name.lower()}"
    return None


def parse_patients(frame: pd.DataFrame, check_grammar: bool) -> PatientSet:
    """Reduce sequence rows (``person_id``, ``concept_ids``) to a :class:`PatientSet`.

    Args:
        frame: Rows in the patient-sequence format; an ``is_valid`` column of False excludes a row.
        check_grammar: Exclude rows that are not whole patients under :mod:`cehrgpt.grammar`
            (for generated data); otherwise only rows whose prompt cannot be read are excluded.

    Returns:
        The parsed patients, with ``excluded`` and ``exclusion_reasons`` counting the rows left out.
    """
    person_ids: list[int] = []
    ages: list[int] = []
    years: list[int] = []
    genders: list[int] = []
    races: list[int] = []
    lengths: list[int] = []
    values: list[int] = []
    timeline_lengths: list[int] = []
    timeline: list[int] = []
    value_lengths: list[int] = []
    value_shingle_list: list[int] = []
    reasons: Counter[str] = Counter()
    kept_rows: list[int] = []
    valid_flags = frame["is_valid"].tolist() if "is_valid" in frame.columns else None
    for row, (person_id, tokens) in enumerate(
        zip(frame["person_id"].tolist(), frame["concept_ids"], strict=True)
    ):
        if valid_flags is not None and valid_flags[row] is False:
            reasons["is_valid is false"] += 1
            continue
        if check_grammar:
            raw = [] if tokens is None else list(tokens)
            if any(t is None for t in raw):
                reasons["null token"] += 1
                continue
            if (reason := _whole_patient(grammar.assign_kinds(raw))) is not None:
                reasons[reason.split(" in state")[0]] += 1
                continue
        content = grammar.clinical_content(tokens)
        kinds = grammar.assign_kinds(content)
        year = grammar.prompt_year(content[0]) if len(content) >= grammar.PROMPT_LENGTH else None
        age = grammar.prompt_age(content[1]) if year is not None else None
        if year is None or age is None or kinds[2] != TokenKind.GENDER or kinds[3] != TokenKind.RACE:
            reasons["no demographic prompt"] += 1
            continue
        concepts = {
            grammar.concept_id_of(token)
            for token, kind in zip(content, kinds, strict=True)
            if kind == TokenKind.CONCEPT
        }
        concepts.discard(0)
        concepts.discard(None)
        shingles = np.unique(np.asarray(timeline_shingles(content[grammar.PROMPT_LENGTH :]), dtype=np.int64))
        person_ids.append(int(person_id))
        kept_rows.append(row)
        ages.append(age)
        years.append(year)
        genders.append(grammar.concept_id_of(content[2]) or 0)
        races.append(grammar.concept_id_of(content[3]) or 0)
        lengths.append(len(concepts))
        values.extend(sorted(c for c in concepts if c is not None))
        timeline_lengths.append(len(shingles))
        timeline.extend(shingles.tolist())
        valued = np.unique(np.asarray(value_shingles(content[grammar.PROMPT_LENGTH :]), dtype=np.int64))
        value_lengths.append(len(valued))
        value_shingle_list.extend(valued.tolist())
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    timeline_indptr = np.zeros(len(timeline_lengths) + 1, dtype=np.int64)
    np.cumsum(timeline_lengths, out=timeline_indptr[1:])
    value_indptr = np.zeros(len(value_lengths) + 1, dtype=np.int64)
    np.cumsum(value_lengths, out=value_indptr[1:])
    return PatientSet(
        person_ids=np.asarray(person_ids, dtype=np.int64),
        ages=np.asarray(ages, dtype=np.float64),
        genders=np.asarray(genders, dtype=np.int64),
        races=np.asarray(races, dtype=np.int64),
        concept_indptr=indptr,
        concept_values=np.asarray(values, dtype=np.int64),
        excluded=sum(reasons.values()),
        exclusion_reasons=dict(reasons),
        source_rows=np.asarray(kept_rows, dtype=np.int64),
        years=np.asarray(years, dtype=np.int64),
        timeline_indptr=timeline_indptr,
        timeline_values=np.asarray(timeline, dtype=np.int64),
        value_indptr=value_indptr,
        value_values=np.asarray(value_shingle_list, dtype=np.int64),
    )


@dataclass(frozen=True)
class FeatureMatrix:
    """Patients as vectors: a binary sparse part and an optional scaled-age column."""

    binary: sp.csr_matrix  # float32 0/1: one-hot gender, one-hot race, concept presence
    age: np.ndarray | None  # float64 in [0, 1], or None when age is not a feature
    age_span: float = 0.0  # years between the scale's 0 and 1 (lets the kernel work in whole years)

    def __len__(self) -> int:
        return self.binary.shape[0]

    def squared_norms(self) -> np.ndarray:
        norms = np.diff(self.binary.indptr).astype(np.float64)
        return norms if self.age is None else norms + self.age**2


@dataclass(frozen=True)
class FeatureSpace:
    """The columns every compared set is encoded on, and the one age scale they share.

    The whole space (no concept subset asked) also sees time: each timeline shingle
    (:func:`timeline_shingles`: visit order, types, gaps, concepts per visit, repeats) is a
    column, and the prompt year is thermometer-coded (a column per year from the earliest,
    set up to the patient's year), so its Hamming part is the difference in years. A
    patient copied with one gap moved or the calendar shifted sits a few units away; one
    with the same concepts in another order, at other times, sits far away.
    """

    concept_ids: np.ndarray  # sorted int64: the concept columns
    gender_ids: np.ndarray  # sorted int64
    race_ids: np.ndarray  # sorted int64
    age_min: float
    age_max: float
    timeline_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted shingle columns
    year_min: int = 0
    year_max: int = 0  # the thermometer's columns: years year_min + 1 .. year_max

    @classmethod
    def fit(
        cls, patient_sets: Sequence[PatientSet], concept_vocabulary: Iterable[int] | None = None
    ) -> FeatureSpace:
        """Fit the columns and the age scale over all ``patient_sets`` together.

        Args:
            patient_sets: Every set that will be compared (training, held-out, synthetic).
            concept_vocabulary: More concept columns (e.g. a tokenizer's concepts), beside the
                union of the concepts in the sets. A concept the sets have is never dropped,
                even when the vocabulary lacks it (a tokenizer leaves rare concepts out): every
                analysis sees the same patients, whichever ``--tokenizer_path`` it was given.
        """
        concepts = np.unique(np.concatenate([s.concept_values for s in patient_sets]))
        if concept_vocabulary is not None:
            concepts = np.union1d(concepts, np.fromiter(concept_vocabulary, dtype=np.int64))
        ages = np.concatenate([s.ages for s in patient_sets])
        timelines = [s.timeline_values for s in patient_sets if s.timeline_values is not None]
        timelines += [s.value_values for s in patient_sets if s.value_values is not None]
        years = [s.years for s in patient_sets if s.years is not None and len(s.years)]
        all_years = np.concatenate(years) if years else np.zeros(0, np.int64)
        return cls(
            concept_ids=concepts.astype(np.int64),
            gender_ids=np.unique(np.concatenate([s.genders for s in patient_sets])),
            race_ids=np.unique(np.concatenate([s.races for s in patient_sets])),
            age_min=float(ages.min()) if len(ages) else 0.0,
            age_max=float(ages.max()) if len(ages) else 0.0,
            timeline_ids=np.unique(np.concatenate(timelines)) if timelines else np.zeros(0, np.int64),
            year_min=int(all_years.min()) if len(all_years) else 0,
            year_max=int(all_years.max()) if len(all_years) else 0,
        )

    def scale_age(self, ages: np.ndarray) -> np.ndarray:
        span = self.age_max - self.age_min
        if span <= 0:
            return np.zeros(len(ages), dtype=np.float64)
        return (np.asarray(ages, dtype=np.float64) - self.age_min) / span

    def unknown_concepts(self, concept_ids: Iterable[int]) -> list[int]:
        """The ids among ``concept_ids`` that are not columns of this space."""
        known = set(self.concept_ids.tolist())
        return sorted({int(c) for c in concept_ids} - known)

    def encode(
        self, patients: PatientSet, concepts: np.ndarray | None = None, demographics: bool = True
    ) -> FeatureMatrix:
        """Encode patients; ``concepts`` restricts the concept columns, ``demographics`` adds age/gender/race.

        Without ``concepts`` the timeline and year columns follow the concepts (for patients parsed
        from sequences). Concepts and shingles a patient has that are not columns are ignored.
        """
        columns = self.concept_ids if concepts is None else np.unique(np.asarray(concepts, dtype=np.int64))
        n = len(patients)
        row_of_value = np.repeat(np.arange(n, dtype=np.int64), np.diff(patients.concept_indptr))
        values = patients.concept_values
        position = np.searchsorted(columns, values)
        known = position < len(columns)
        known[known] = columns[position[known]] == values[known]
        rows = [row_of_value[known]]
        cols = [position[known]]
        offset = 0
        if demographics:
            gender_col = np.searchsorted(self.gender_ids, patients.genders)
            race_col = np.searchsorted(self.race_ids, patients.races)
            offset = len(self.gender_ids) + len(self.race_ids)
            rows = [np.arange(n), np.arange(n), rows[0]]
            cols = [gender_col, len(self.gender_ids) + race_col, cols[0] + offset]
        row_index = np.concatenate(rows)
        col_index = np.concatenate(cols)
        width = offset + len(columns)
        if concepts is None and patients.timeline_values is not None and patients.timeline_indptr is not None:
            extra_rows, extra_cols, width = self._time_columns(patients, width)
            row_index = np.concatenate([row_index, extra_rows])
            col_index = np.concatenate([col_index, extra_cols])
        binary = sp.csr_matrix(
            (np.ones(len(row_index), dtype=np.float32), (row_index, col_index)), shape=(n, width)
        )
        binary.sum_duplicates()
        binary.data[:] = 1.0
        if not demographics:
            return FeatureMatrix(binary=binary, age=None)
        return FeatureMatrix(
            binary=binary, age=self.scale_age(patients.ages), age_span=max(self.age_max - self.age_min, 0.0)
        )

    def _time_columns(self, patients: PatientSet, offset: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows and columns (from ``offset``) of the timeline and value shingles and the year thermometer; the new
        width."""
        assert patients.timeline_values is not None and patients.timeline_indptr is not None
        n = len(patients)
        values = patients.timeline_values
        row_of_value = np.repeat(np.arange(n, dtype=np.int64), np.diff(patients.timeline_indptr))
        if patients.value_values is not None and patients.value_indptr is not None:  # values: more columns
            values = np.concatenate([values, patients.value_values])
            row_of_value = np.concatenate(
                [row_of_value, np.repeat(np.arange(n, dtype=np.int64), np.diff(patients.value_indptr))]
            )
        position = np.searchsorted(self.timeline_ids, values)
        known = position < len(self.timeline_ids)
        known[known] = self.timeline_ids[position[known]] == values[known]
        rows, cols = [row_of_value[known]], [offset + position[known]]
        offset += len(self.timeline_ids)
        span = self.year_max - self.year_min
        if span > 0 and patients.years is not None:
            steps = np.clip(patients.years - self.year_min, 0, span)
            rows.append(np.repeat(np.arange(n, dtype=np.int64), steps))
            starts = np.repeat(np.cumsum(steps) - steps, steps)
            cols.append(offset + np.arange(int(steps.sum()), dtype=np.int64) - starts)
        return np.concatenate(rows), np.concatenate(cols), offset + max(span, 0)


@dataclass(frozen=True)
class NearestNeighbours:
    """For each row of ``a`` its nearest row of ``b``, and (when asked) the reverse."""

    a_to_b_distance: np.ndarray  # float64 squared Euclidean
    a_to_b_index: np.ndarray  # int64
    b_to_a_distance: np.ndarray | None = None
    b_to_a_index: np.ndarray | None = None


class _Products:
    """Chunked products ``a[rows] · bᵀ`` with the frequent columns dense (BLAS) and the rare ones sparse.

    ``extra_a`` / ``extra_b`` are dense columns appended to both sides (the age);
    ``b_weight`` multiplies b's binary part, so one product carries ``w·(a·b) + age_a·age_b``.
    """

    def __init__(
        self,
        a: sp.csr_matrix,
        b: sp.csr_matrix,
        dtype: type,
        b_weight: float = 1.0,
        extra_a: np.ndarray | None = None,
        extra_b: np.ndarray | None = None,
        dense_columns: int = DENSE_COLUMNS,
    ):
        a_counts = np.diff(a.tocsc().indptr)
        b_counts = np.diff(b.tocsc().indptr)
        shared = np.flatnonzero((a_counts > 0) & (b_counts > 0))
        by_frequency = shared[np.argsort(-(a_counts[shared] + b_counts[shared]), kind="stable")]
        dense, rare = by_frequency[:dense_columns], by_frequency[dense_columns:]
        self.dtype = dtype
        self.a_dense = a[:, dense].tocsr()
        b_dense = b[:, dense].toarray().astype(dtype) * dtype(b_weight)
        if extra_b is not None:
            b_dense = np.hstack([b_dense, extra_b.astype(dtype)[:, None]])
        self.b_dense_t = np.ascontiguousarray(b_dense.T)
        self.extra_a: np.ndarray | None = None if extra_a is None else extra_a.astype(dtype)
        self.a_rare = a[:, rare].tocsr().astype(dtype) if len(rare) else None
        self.b_rare_t = (b[:, rare].T.tocsr() * b_weight).astype(dtype) if len(rare) else None

    def __call__(self, start: int, stop: int, b_start: int = 0) -> np.ndarray:
        """The product of rows ``start:stop`` of a with rows ``b_start:`` of b."""
        a_dense = self.a_dense[start:stop].toarray().astype(self.dtype, copy=False)
        if self.extra_a is not None:
            a_dense = np.hstack([a_dense, self.extra_a[start:stop, None]])
        product = a_dense @ self.b_dense_t[:, b_start:]
        if self.a_rare is not None and self.b_rare_t is not None:
            product += (self.a_rare[start:stop] @ self.b_rare_t[:, b_start:]).toarray()
        return product


def _whole_years(m: FeatureMatrix) -> np.ndarray | None:
    """Ages as whole years from the scale's 0 when they are whole (the prompt's ages are), else None."""
    if m.age is None or m.age_span <= 0:
        return None
    years = np.rint(m.age * m.age_span)
    return years if np.allclose(years, m.age * m.age_span, atol=1e-6) else None


@dataclass(frozen=True)
class _Setup:
    products: _Products
    a_norms: np.ndarray  # float64, scaled
    b_norms: np.ndarray
    a_norms_block: np.ndarray  # in the block dtype
    b_norms_block: np.ndarray
    scale: float
    tie_tolerance: float  # block values within this of a row's minimum tie with it


def _setup(a: FeatureMatrix, b: FeatureMatrix) -> _Setup:
    """Norms and products in the units described in :func:`_scan`."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"nearest neighbours need two non-empty sets, got {len(a)} and {len(b)} rows")
    if (a.age is None) != (b.age is None) or a.age_span != b.age_span:
        raise ValueError("both sets must be encoded on the same feature space")
    a_years, b_years = _whole_years(a), _whole_years(b)
    a_age, b_age = (a_years, b_years) if a_years is not None and b_years is not None else (a.age, b.age)
    scale = a.age_span**2 if a_years is not None and b_years is not None else 1.0
    a_norms = scale * np.diff(a.binary.indptr).astype(np.float64)
    b_norms = scale * np.diff(b.binary.indptr).astype(np.float64)
    if a_age is not None and b_age is not None:
        a_norms, b_norms = a_norms + a_age**2, b_norms + b_age**2
    whole_numbers = scale != 1.0 or a_age is None
    dtype = np.float32 if whole_numbers and float(a_norms.max() + b_norms.max()) < 2**24 else np.float64
    return _Setup(
        tie_tolerance=0.5 if whole_numbers else 1e-9,
        products=_Products(a.binary, b.binary, dtype, b_weight=scale, extra_a=a_age, extra_b=b_age),
        a_norms=a_norms,
        b_norms=b_norms,
        a_norms_block=a_norms.astype(dtype),
        b_norms_block=b_norms.astype(dtype),
        scale=scale,
    )


def _clean(distance: np.ndarray, scale: float) -> np.ndarray:
    return np.round(np.maximum(distance, 0.0) / scale, _DISTANCE_DECIMALS)


def _scan(a: FeatureMatrix, b: FeatureMatrix, *, both_directions: bool, chunk_size: int) -> NearestNeighbours:
    """Nearest neighbours by blocks of ``chunk_size`` rows of ``a`` against all of ``b``.

    Distances are computed scaled by ``span²`` (span = the age scale's years) so
    that every term is a whole number: binary Hamming × span² + (Δ years)². When
    those stay below 2^24 the blocks are float32 and exact, so ties are exact
    too; otherwise the blocks are float64.
    """
    setup = _setup(a, b)
    n_a, n_b = len(a), len(b)
    row_distance = np.empty(n_a, dtype=np.float64)
    row_index = np.empty(n_a, dtype=np.int64)
    col_distance = np.full(n_b, np.inf)
    col_index = np.zeros(n_b, dtype=np.int64)
    for start in range(0, n_a, chunk_size):
        stop = min(start + chunk_size, n_a)
        rows = np.arange(stop - start)
        block = setup.products(start, stop)
        block *= -2
        block += setup.b_norms_block[None, :]
        if both_directions:
            block += setup.a_norms_block[start:stop, None]
            best = np.argmin(block, axis=1)
            row_distance[start:stop] = block[rows, best]
            col_best = np.argmin(block, axis=0)
            col_value = block[col_best, np.arange(n_b)].astype(np.float64)
            better = col_value < col_distance
            col_distance[better] = col_value[better]
            col_index[better] = col_best[better] + start
        else:
            best = np.argmin(block, axis=1)
            row_distance[start:stop] = block[rows, best].astype(np.float64) + setup.a_norms[start:stop]
        row_index[start:stop] = best
    return NearestNeighbours(
        a_to_b_distance=_clean(row_distance, setup.scale),
        a_to_b_index=row_index,
        b_to_a_distance=_clean(col_distance, setup.scale) if both_directions else None,
        b_to_a_index=col_index if both_directions else None,
    )


def _scan_self(a: FeatureMatrix, *, chunk_size: int) -> NearestNeighbours:
    """Leave-one-out nearest neighbours over the upper triangle only (half the products of a full scan).

    A block of rows ``start:stop`` meets columns ``start:``; its row minima and
    column minima both update the running best, ties going to the lowest index.
    """
    setup = _setup(a, a)
    n = len(a)
    best_distance = np.full(n, np.inf)
    best_index = np.zeros(n, dtype=np.int64)

    def offer(targets: np.ndarray, distance: np.ndarray, index: np.ndarray) -> None:
        current, current_index = best_distance[targets], best_index[targets]
        better = (distance < current) | ((distance == current) & (index < current_index))
        best_distance[targets[better]] = distance[better]
        best_index[targets[better]] = index[better]

    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = np.arange(stop - start)
        block = setup.products(start, stop, b_start=start)
        block *= -2
        block += setup.b_norms_block[None, start:]
        block += setup.a_norms_block[start:stop, None]
        block[rows, rows] = np.inf
        row_best = np.argmin(block, axis=1)
        offer(start + rows, block[rows, row_best].astype(np.float64), row_best + start)
        col_best = np.argmin(block, axis=0)
        columns = np.arange(n - start)
        offer(start + columns, block[col_best, columns].astype(np.float64), col_best + start)
    return NearestNeighbours(a_to_b_distance=_clean(best_distance, setup.scale), a_to_b_index=best_index)


def nearest_distance_and_ties(
    a: FeatureMatrix, b: FeatureMatrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: its squared distance to the nearest row of ``b`` and how many rows of ``b`` are that near.

    The count lets a comparison of two reference sets split a tie by the sets'
    shares of the tied records instead of guessing (see the memorisation analysis).
    """
    setup = _setup(a, b)
    distance = np.empty(len(a), dtype=np.float64)
    ties = np.empty(len(a), dtype=np.int64)
    for start in range(0, len(a), chunk_size):
        stop = min(start + chunk_size, len(a))
        block = setup.products(start, stop)
        block *= -2
        block += setup.b_norms_block[None, :]
        row_min = block.min(axis=1)
        ties[start:stop] = np.count_nonzero(block <= row_min[:, None] + setup.tie_tolerance, axis=1)
        distance[start:stop] = row_min.astype(np.float64) + setup.a_norms[start:stop]
    return _clean(distance, setup.scale), ties


def nearest_neighbours(
    a: FeatureMatrix, b: FeatureMatrix, *, both_directions: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> NearestNeighbours:
    """Nearest row of ``b`` for every row of ``a`` (and of ``a`` for every row of ``b``) by squared distance.

    Ties go to the lowest index. Both directions come from the same pass over the
    distance blocks, so asking for both costs little more than one.
    """
    return _scan(a, b, both_directions=both_directions, chunk_size=chunk_size)


def nearest_other(a: FeatureMatrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> NearestNeighbours:
    """Nearest *other* row of ``a`` for every row of ``a`` (leave-one-out; needs at least 2 rows)."""
    if len(a) < 2:
        raise ValueError(f"leave-one-out nearest neighbours need at least 2 rows, got {len(a)}")
    return _scan_self(a, chunk_size=chunk_size)


def sample_indices(rng: np.random.Generator, available: int, requested: int) -> np.ndarray:
    """``requested`` distinct indices below ``available`` (all of them, shuffled, when fewer exist)."""
    return rng.choice(available, size=min(requested, available), replace=False).astype(np.int64)


def timeline_matrices(*patient_sets: PatientSet) -> list[sp.csr_matrix]:
    """Each set's timeline shingles as binary rows over one shared column space (the union of shingles)."""
    for patients in patient_sets:
        if patients.timeline_indptr is None or patients.timeline_values is None:
            raise ValueError(
                "these patients carry no timeline (parse them from sequences with parse_patients)"
            )
    columns = np.unique(np.concatenate([p.timeline_values for p in patient_sets]))  # type: ignore[misc]
    matrices = []
    for patients in patient_sets:
        assert patients.timeline_indptr is not None and patients.timeline_values is not None
        matrices.append(
            sp.csr_matrix(
                (
                    np.ones(len(patients.timeline_values), dtype=np.float32),
                    np.searchsorted(columns, patients.timeline_values),
                    patients.timeline_indptr,
                ),
                shape=(len(patients), len(columns)),
            )
        )
    return matrices


@dataclass(frozen=True)
class TimelineMatches:
    """For each row of ``a``: its most-overlapping compatible row of ``b`` and the groups of ``b`` it nears."""

    best_index: np.ndarray  # int64, -1 when no compatible row of b shares a shingle
    best_overlap: np.ndarray  # float64 in [0, 1]
    group_hits: np.ndarray  # bool [len(a), n_groups]: some row of that group is at least min_overlap


def timeline_matches(
    a: PatientSet,
    b: PatientSet,
    *,
    min_overlap: float,
    edit_shingles: int,
    max_age_difference: float,
    min_concepts: int,
    groups: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> TimelineMatches:
    """Timeline overlap of every row of ``a`` with every compatible row of ``b``, one chunk of ``a`` at a time.

    The overlap of two patients is the share of the shorter timeline's shingles that the other
    has too (|A ∩ B| / min(|A|, |B|), on :func:`timeline_shingles` multisets): 1 for equal
    timelines, a prefix, or a timeline contained in a longer one. A pair is compatible when gender
    and race are equal and the ages differ by at most ``max_age_difference`` years; ``best_*`` is
    over compatible rows. A compatible pair *matches* when both patients have at least
    ``min_concepts`` distinct clinical concepts (shorter records identify nobody) and the shorter
    timeline misses at most
    ``max(edit_shingles, (1 − min_overlap) × its size)`` shingles of the other: one edit changes up
    to three shingles, which on a short record is more than a share.

    Args:
        groups: an int per row of ``b`` naming its group (0 for all by default); ``group_hits``
            says, per row of ``a``, which groups hold a matching row.
    """
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"timeline matches need two non-empty sets, got {len(a)} and {len(b)} rows")
    group_of = np.zeros(len(b), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    n_groups = int(group_of.max()) + 1
    membership = sp.csr_matrix(
        (np.ones(len(b), dtype=np.float32), (np.arange(len(b)), group_of)), shape=(len(b), n_groups)
    )
    a_matrix, b_matrix = timeline_matrices(a, b)
    products = _Products(a_matrix, b_matrix, np.float32)
    a_sizes = np.diff(a_matrix.indptr).astype(np.float32)
    b_sizes = np.diff(b_matrix.indptr).astype(np.float32)
    a_long = a.num_concepts() >= min_concepts
    b_long = b.num_concepts() >= min_concepts
    best_index = np.full(len(a), -1, dtype=np.int64)
    best_overlap = np.zeros(len(a), dtype=np.float64)
    group_hits = np.zeros((len(a), n_groups), dtype=bool)
    for start in range(0, len(a), chunk_size):
        stop = min(start + chunk_size, len(a))
        rows = slice(start, stop)
        shared = products(start, stop)
        shorter = np.maximum(np.minimum(a_sizes[rows, None], b_sizes[None, :]), 1.0)
        compatible = (
            (a.genders[rows, None] == b.genders[None, :])
            & (a.races[rows, None] == b.races[None, :])
            & (np.abs(a.ages[rows, None] - b.ages[None, :]) <= max_age_difference)
        )
        allowed = np.maximum(np.float32(edit_shingles), np.float32(1 - min_overlap) * shorter)
        near = (
            compatible
            & a_long[rows, None]
            & b_long[None, :]
            & (shorter - shared <= allowed + np.float32(1e-4))
        )
        shared /= shorter
        shared[~compatible] = 0.0
        best = np.argmax(shared, axis=1)
        value = shared[np.arange(stop - start), best].astype(np.float64)
        best_overlap[rows] = value
        best_index[rows] = np.where(value > 0, best, -1)
        group_hits[rows] = (sp.csr_matrix(near, dtype=np.float32) @ membership).toarray() > 0
    return TimelineMatches(best_index=best_index, best_overlap=best_overlap, group_hits=group_hits)
