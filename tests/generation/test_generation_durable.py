"""True resume: a shard copies each finished file to durable storage, a retried pod (empty local folder) skips them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import cehrgpt
from cehrgpt.generation.durable import DurableCopy, DurableStoreError
from cehrgpt.generation.generate_batch_hf_gpt_sequence import main

STRATEGY = "top_p10000"


def _argv(model: Path, data: Path, out: Path, store: str, **flags) -> list[str]:
    values = {
        "num_of_patients": 120,
        "batch_size": 2,
        "buffer_size": 2,
        "context_window": 32,
        "seed": 3,
    } | flags
    argv = ["--model_folder", str(model), "--output_folder", str(out), "--demographic_data_path", str(data)]
    for name, value in values.items():
        argv += [f"--{name}", str(value)]
    # one window per patient, as before sliding: the test is about the durable copy, and stays as quick
    return [*argv, "--durable_output_uri", store, "--no_progress", "--no_sliding"]


def _parquet(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def test_a_killed_shard_resumes_from_durable_storage_on_an_empty_pod(
    model_folder, demographic_folder, tmp_path
):
    store = tmp_path / "bucket"  # a local directory acting as the object store
    env = dict(os.environ, PYTHONPATH=str(Path(cehrgpt.__file__).parents[1]), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "cehrgpt.generation.generate_batch_hf_gpt_sequence"]
    first = subprocess.Popen(
        [*command, *_argv(model_folder, demographic_folder, tmp_path / "pod1", str(store))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stored = store / STRATEGY / "generated_sequences"
    deadline = time.monotonic() + 300
    while len(list(stored.glob("*.parquet"))) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # preempted: the pod and its local folder are gone
    first.wait()
    assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-2000:] if first.stderr else ""
    before = _parquet(stored)
    assert 3 <= len(before) < 60
    assert not (tmp_path / "pod1" / STRATEGY / "generation_summary.json").exists()

    assert main(_argv(model_folder, demographic_folder, tmp_path / "pod2", str(store))) == 0
    local = tmp_path / "pod2" / STRATEGY / "generated_sequences"
    after = _parquet(local)
    assert (
        len(after) == 60 and {name: after[name] for name in before} == before
    )  # finished files kept as they were
    assert _parquet(stored) == after  # every file of the retry reached the store too
    ids = [
        i for f in sorted(local.glob("*.parquet")) for i in pq.read_table(f).column("person_id").to_pylist()
    ]
    assert ids == [3 * 2**40 + i for i in range(1, 121)]
    shard = json.loads((tmp_path / "pod2" / STRATEGY / "generation_summary.json").read_text())["shards"][0]
    assert shard["files_fetched_from_durable_storage"] == shard["files_skipped_as_done"] == len(before)
    assert (shard["patients"], shard["patients_in_files"]) == (120 - 2 * len(before), 120)
    # the summary's tokens cover the killed attempt's files as well as this one's
    assert shard["sampled_tokens"] > shard["sampled_tokens_this_attempt"] > 0
    assert json.loads((store / STRATEGY / "runs" / "seed3.json").read_text())["num_of_patients"] == 120


def test_a_retry_with_other_settings_is_refused_by_the_stored_run_record(
    model_folder, demographic_folder, tmp_path, capsys
):
    store = f"file://{tmp_path / 'bucket'}"  # pyarrow's filesystem on a local path
    assert main(_argv(model_folder, demographic_folder, tmp_path / "pod1", store, num_of_patients=4)) == 0
    assert main(_argv(model_folder, demographic_folder, tmp_path / "pod2", store, num_of_patients=6)) == 2
    assert "holds run seed 3 with other settings (num_of_patients)" in capsys.readouterr().err


def test_the_local_folder_as_its_own_durable_location_copies_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    copy = DurableCopy(str(tmp_path / "out"), tmp_path / "out")
    assert copy.is_local_folder_itself and copy.fetch("x", "") == []


def test_an_unknown_scheme_fails_clearly(tmp_path):
    with pytest.raises(DurableStoreError, match="cannot open durable location 'nope://b/x'"):
        DurableCopy("nope://b/x", tmp_path)


def test_an_unreachable_store_costs_the_resume_not_the_run(model_folder, demographic_folder, tmp_path):
    blocked = tmp_path / "bucket"
    blocked.write_text("a file where the store's folder should be")  # every listing and write fails
    argv = _argv(model_folder, demographic_folder, tmp_path / "pod", str(blocked), num_of_patients=4)
    assert main(argv) == 0
    shard = json.loads((tmp_path / "pod" / STRATEGY / "generation_summary.json").read_text())["shards"][0]
    assert shard["patients_in_files"] == 4 and shard["files_fetched_from_durable_storage"] == 0
    assert shard["durable_copy_problem"].startswith("cannot ")
