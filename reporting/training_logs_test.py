"""Tests of `mtrank tensorboard`: the Trainer runs found through a real ML
Metadata store (or by listing pipeline_root), and the command printed."""
import os

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from mtrank.cli import main as cli
from mtrank.reporting import training_logs


def _run_dir(root, name, with_logs=True):
    path = root / "pipeline_root" / "Trainer" / "model_run" / name
    (path / "train").mkdir(parents=True)
    if with_logs:
        (path / "train" / "events.out.tfevents.1.host").write_bytes(b"")
    return str(path)


def _store(work_dir):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(work_dir / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def test_newest_runs_with_logs_from_mlmd(tmp_path):
    store = _store(tmp_path)
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


def test_cli_prints_command_bound_to_localhost(tmp_path, capsys):
    uri = _run_dir(tmp_path, "5")
    assert cli.main(["tensorboard", "--work-dir", str(tmp_path), "--port", "7007"]) == 0
    out = capsys.readouterr().out
    command = out.strip().splitlines()[-1]
    assert f"--logdir_spec run5:{uri}" in command
    assert "--host 127.0.0.1 --port 7007" in command
    assert os.path.basename(command.split()[0]) == "tensorboard"


def test_cli_without_logs_exits_2(tmp_path, capsys):
    assert cli.main(["tensorboard", "--work-dir", str(tmp_path)]) == 2
    assert "no Trainer TensorBoard logs" in capsys.readouterr().err
