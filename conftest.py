"""Pytest root: selects Keras 2 before any test module imports TensorFlow."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# pytest.ini puts tests/ (the `mtrank_testing` helpers) on this process's path;
# the interpreters and Beam workers that tests start find them through this.
_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_TESTS, os.environ.get("PYTHONPATH")]))
