"""Tests of serving/model_manager.py on real SavedModels in real directories:
version policies, labels, broken and half-written versions, reloads."""
import gc
import logging
import os
import shutil
import weakref

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from mtrank.serving import model_manager, server_config
from mtrank_testing import serving_util as testing_util
from mtrank.serving.errors import RequestError

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Versions 1, 2 and 3 of the test model, to copy into model bases."""
    root = tmp_path_factory.mktemp("written")
    for version in (1, 2, 3):
        testing_util.write_test_model(str(root), version, bias=float(version))
    return root


def model_base(tmp_path, written, versions, name="mtrank"):
    base = tmp_path / name
    base.mkdir()
    for version in versions:
        shutil.copytree(written / str(version), base / str(version))
    return base


def config_for(base, policy_text="", labels=None, name="mtrank"):
    config = server_config.single_model_config(name, str(base))
    model = config.model_config_list.config[0]
    if policy_text:
        model.ClearField("model_version_policy")
        from google.protobuf import text_format
        text_format.Parse(policy_text, model.model_version_policy)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


def spec(name="mtrank", version=None, label=None):
    model_spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        model_spec.version.value = version
    if label is not None:
        model_spec.version_label = label
    return model_spec


def no_warmup(loaded):
    pass


@pytest.mark.parametrize("policy, expected", [
    ("", (3,)),
    ("latest { num_versions: 2 }", (2, 3)),
    ("specific { versions: 1 versions: 3 }", (1, 3)),
    ("specific { versions: 2 versions: 9 }", (2,)),
    ("all {}", (1, 2, 3)),
])
def test_version_policy_selects_versions(tmp_path, written, policy, expected):
    base = model_base(tmp_path, written, (1, 2, 3))

    manager = model_manager.ModelManager(config_for(base, policy), no_warmup)

    assert manager.available() == {"mtrank": expected}
    assert manager.resolve(spec()).version == max(expected)
    for version in expected:
        assert manager.resolve(spec(version=version)).version == version


def test_labels_and_unknown_versions(tmp_path, written):
    base = model_base(tmp_path, written, (1, 2, 3))
    manager = model_manager.ModelManager(
        config_for(base, "specific { versions: 1 versions: 3 }", {"stable": 1, "canary": 3}),
        no_warmup)

    assert manager.resolve(spec(label="stable")).version == 1
    assert manager.resolve(spec(label="canary")).version == 3
    for bad in (spec(label="beta"), spec(version=2), spec(name="other")):
        with pytest.raises(RequestError) as raised:
            manager.resolve(bad)
        assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_label_outside_a_specific_policy_is_refused(tmp_path, written):
    base = model_base(tmp_path, written, (1,))
    with pytest.raises(server_config.ServerConfigError, match="version_labels"):
        model_manager.ModelManager(
            config_for(base, "specific { versions: 1 }", {"stable": 2}), no_warmup)


def test_corrupt_newest_version_is_skipped_and_the_last_good_one_serves(
        tmp_path, written, caplog):
    base = model_base(tmp_path, written, (1, 2))
    os.makedirs(base / "3")
    (base / "3" / "saved_model.pb").write_bytes(b"\x00 this is not a SavedModel")
    with caplog.at_level(logging.ERROR, logger="mtrank.serving.model_manager"):
        manager = model_manager.ModelManager(config_for(base), no_warmup)

    assert manager.available() == {"mtrank": (2,)}
    assert any("skipping version 3" in r.getMessage() for r in caplog.records)
    statuses = {s.version: s for s in manager.status(spec())}
    assert statuses[2].state == AVAILABLE
    assert statuses[3].state == END and statuses[3].status.error_code != 0
    assert statuses[3].status.error_message

    caplog.clear()
    manager.poll()  # unchanged files are not tried again
    assert not caplog.records
    assert manager.available() == {"mtrank": (2,)}


def test_half_written_version_waits_then_loads_when_complete(tmp_path, written):
    base = model_base(tmp_path, written, (1,))
    manager = model_manager.ModelManager(config_for(base), no_warmup)
    os.makedirs(base / "2")
    shutil.copy(written / "2" / "saved_model.pb", base / "2" / "saved_model.pb")

    manager.poll()  # seen for the first time: not loaded yet
    assert manager.available() == {"mtrank": (1,)}
    manager.poll()  # unchanged, so tried: the variables are missing
    assert manager.available() == {"mtrank": (1,)}
    assert {s.version: s.state for s in manager.status(spec())} == {1: AVAILABLE, 2: END}

    shutil.rmtree(base / "2")
    shutil.copytree(written / "2", base / "2")
    manager.poll()
    manager.poll()

    assert manager.available() == {"mtrank": (2,)}
    assert {s.version: s.state for s in manager.status(spec())} == {1: END, 2: AVAILABLE}
    assert manager.status(spec(version=2))[0].status.error_code == 0


def test_failed_warmup_fails_the_load(tmp_path, written):
    base = model_base(tmp_path, written, (1, 2))

    def warmup(loaded):
        if loaded.version == 2:
            raise ValueError("warmup request failed")

    manager = model_manager.ModelManager(config_for(base), warmup)

    assert manager.available() == {"mtrank": (1,)}
    (failed,) = manager.status(spec(version=2))
    assert "warmup request failed" in failed.status.error_message


def test_reload_adds_and_removes_models(tmp_path, written):
    first = model_base(tmp_path, written, (1,), name="first")
    second = model_base(tmp_path, written, (2, 3), name="second")
    manager = model_manager.ModelManager(config_for(first, name="first"), no_warmup)

    both = model_server_config_pb2.ModelServerConfig()
    both.model_config_list.config.extend(
        config_for(first, name="first").model_config_list.config)
    both.model_config_list.config.extend(
        config_for(second, "all {}", name="second").model_config_list.config)
    manager.reload(both)
    assert manager.available() == {"first": (1,), "second": (2, 3)}

    manager.reload(config_for(second, name="second"))
    assert manager.available() == {"second": (3,)}
    with pytest.raises(RequestError):
        manager.resolve(spec(name="first"))


def test_missing_base_path_fails_at_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        model_manager.ModelManager(config_for(tmp_path / "nothing"), no_warmup)


def test_deleted_version_is_dropped_but_a_vanished_base_keeps_serving(tmp_path, written):
    base = model_base(tmp_path, written, (1, 2))
    manager = model_manager.ModelManager(config_for(base, "all {}"), no_warmup)

    shutil.rmtree(base / "2")
    manager.poll()
    assert manager.available() == {"mtrank": (1,)}

    shutil.move(str(base), str(tmp_path / "elsewhere"))
    manager.poll()
    assert manager.available() == {"mtrank": (1,)}


def test_loaded_versions_are_frozen_out_of_collection_and_dropped_ones_freed(tmp_path, written):
    base = model_base(tmp_path, written, (1,))
    manager = model_manager.ModelManager(config_for(base), no_warmup)
    frozen_with_version_1 = gc.get_freeze_count()
    assert frozen_with_version_1 > 0
    version_1 = weakref.ref(manager.resolve(spec()))

    shutil.copytree(written / "2", base / "2")
    manager.poll()  # version 2 seen
    manager.poll()  # unchanged since: loaded, and version 1 dropped

    assert manager.available() == {"mtrank": (2,)}
    assert version_1() is None
    # Version 1 leaves reference cycles behind (about 1,400 objects here);
    # kept frozen they would never be freed. Version 2 took their place.
    assert abs(gc.get_freeze_count() - frozen_with_version_1) < 500
