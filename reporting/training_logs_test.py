"""Tests of reporting/training_logs.py: the Trainer runs found through a real
ML Metadata store (or by listing pipeline_root). The command `mtrank
tensorboard` prints for them is tested in tests/cli_test.py."""
import pytest
from ml_metadata.proto import metadata_store_pb2

from mtrank.reporting import metadata, training_logs


def _run_dir(root, name, with_logs=True):
    path = root / "pipeline_root" / "Trainer" / "model_run" / name
    (path / "train").mkdir(parents=True)
    if with_logs:
        (path / "train" / "events.out.tfevents.1.host").write_bytes(b"")
    return str(path)


def test_newest_runs_with_logs_from_mlmd(tmp_path):
    store = metadata.open_store(str(tmp_path), create=True)
    type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ModelRun"))
    uris = [_run_dir(tmp_path, "3"), _run_dir(tmp_path, "9", with_logs=False),
            _run_dir(tmp_path, "12")]
    ids = store.put_artifacts([metadata_store_pb2.Artifact(type_id=type_id, uri=u) for u in uris])
    runs = training_logs.model_run_dirs(str(tmp_path))
    # Newest first; the run without event files is left out.
    assert runs == [(f"run{ids[2]}", uris[2]), (f"run{ids[0]}", uris[0])]
    assert training_logs.model_run_dirs(str(tmp_path), limit=1) == runs[:1]


def test_runs_by_listing_without_metadata(tmp_path):
    uri = _run_dir(tmp_path, "5")
    assert training_logs.model_run_dirs(str(tmp_path)) == [("run5", uri)]


def test_no_logs_names_the_work_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        training_logs.model_run_dirs(str(tmp_path))

