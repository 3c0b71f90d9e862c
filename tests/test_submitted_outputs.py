"""A submitted job never writes where its results vanish (pipeline.runtime.lasting_output).

`ray job submit --working-dir .` runs the job in Ray's temporary copy of the checkout; a
relative output path there would be written into that copy and deleted with the job. The
folders here are laid out as Ray lays them out; tests/test_local_stack.py submits for real.
"""
from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.runtime import lasting_output, uploaded_copy


@pytest.fixture
def in_uploaded_copy(tmp_path, monkeypatch):
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    return copy


def test_a_relative_output_in_a_submitted_job_is_refused_in_one_line(in_uploaded_copy):
    with pytest.raises(UserError) as refused:
        lasting_output("work/synth", "--output")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--output work/synth: this submitted job runs in Ray's temporary copy of the checkout")
    assert "pass an absolute path or an s3:// URI (e.g. --output s3://crn/synth)" in message


def test_absolute_paths_and_uris_pass_in_a_submitted_job(in_uploaded_copy, tmp_path):
    assert lasting_output(str(tmp_path / "out"), "--output") == str(tmp_path / "out")
    assert lasting_output("s3://crn/synth", "--output") == "s3://crn/synth"
    assert lasting_output("", "--synthesized") == ""
    assert uploaded_copy(in_uploaded_copy / "jobs" / "train.py") == in_uploaded_copy


def test_outside_a_submitted_job_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lasting_output("work/synth", "--output") == str(tmp_path / "work" / "synth")
    assert uploaded_copy(tmp_path) is None
