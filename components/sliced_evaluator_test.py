"""The SlicedEvaluator's slice count: the slices TFMA will make, and their sizes."""
import apache_beam as beam
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from mtrank.components import sliced_evaluator


def _example(**features) -> bytes:
    feature = {}
    for name, value in features.items():
        if isinstance(value, str):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        elif isinstance(value, list):
            feature[name] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[v.encode() for v in value]))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_slice_keys_as_tfma_names_them():
    record = _example(device="mobile", hour=7, tags=["a", "b"])
    assert list(sliced_evaluator._slice_keys(record, [["device"], ["hour"], ["device", "hour"]])) \
        == [(("device", "mobile"),), (("hour", "7"),), (("device", "mobile"), ("hour", "7"))]
    # A list slices by each value; a missing feature makes no slice.
    assert list(sliced_evaluator._slice_keys(record, [["tags"], ["country"]])) == [
        (("tags", "a"),), (("tags", "b"),)]


def test_count_slices_over_files(tmp_path):
    for i, devices in enumerate((["mobile", "mobile", "tablet"], ["mobile", "desktop"])):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{i}.tfrecord")) as writer:
            for device in devices:
                writer.write(_example(device=device))
    with beam.Pipeline() as pipeline:
        counted = sliced_evaluator.count_slices(
            pipeline, [str(tmp_path / "part-0*"), str(tmp_path / "part-1*")], [["device"]])
        assert_that(counted, equal_to([((("device", "mobile"),), 3),
                                       ((("device", "tablet"),), 1),
                                       ((("device", "desktop"),), 1)]))
