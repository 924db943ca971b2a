"""The serving contract: the names and values an exported mtrank model, our
server, TensorFlow Serving and the client must agree on.

serving/signatures.py writes them into a SavedModel; serving/model_store.py,
server.py and tensors.py read them back; serving/client.py and base/examples.py
build requests with them. Plain Python, so this module imports neither
TensorFlow nor anything else of the project (serving/signatures.py keeps
the TensorFlow dtype of each dtype name here).
"""
import os

# Signatures of an exported model (serving/signatures.py says what each does).
SERVING_DEFAULT = "serving_default"
PREDICT_RAW = "predict_raw"
REGRESS = "regress"
CLASSIFY = "classify"
TRANSFORM_FEATURES = "transform_features"

# The serialized tf.Examples input of serving_default and transform_features.
EXAMPLES_INPUT = "examples"
# TF Serving's Classify and Regress fix these names (tensorflow/serving
# signature_constants).
TF_SERVING_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
CLASSIFY_SCORES = "scores"
CLASSIFY_CLASSES = "classes"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_METHOD = "tensorflow/serving/classify"
# Every input that carries serialized tf.Examples.
EXAMPLE_INPUTS = frozenset({EXAMPLES_INPUT, TF_SERVING_INPUTS})

# Beside the SavedModel: the serving spec (tasks, each feature's dtype and
# shape, the score formula) and the warmup requests TF Serving replays.
EXTRA_DIR = "assets.extra"
SERVING_SPEC_FILE = "mtrank_serving_spec.json"
WARMUP_FILE = "tf_serving_warmup_requests"
SERVING_SPEC_PATH = os.path.join(EXTRA_DIR, SERVING_SPEC_FILE)

# A feature's dtype in the spec, with the value a missing one takes (also
# the padding of predict_raw's lists), and its shape.
DTYPES = ("string", "int64", "float")
DTYPE_DEFAULTS = {"string": "", "int64": 0, "float": 0.0}
SHAPES = ("scalar", "list")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# The fused output every scoring signature adds beside the tasks' outputs;
# FUSED_SCORE_OUTPUT when a task already has the name SCORE_OUTPUT.
SCORE_OUTPUT = "score"
FUSED_SCORE_OUTPUT = "fused_score"


def fused_score_output(task_output_names) -> str:
    """The name of the fused score beside these task outputs."""
    return FUSED_SCORE_OUTPUT if SCORE_OUTPUT in task_output_names else SCORE_OUTPUT


# GetModelMetadata's one metadata field, as TF Serving names it.
SIGNATURE_DEF_FIELD = "signature_def"
# A batch of serialized Examples easily exceeds gRPC's 4 MiB default, and TF
# Serving accepts far larger requests, so both ends raise the limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
