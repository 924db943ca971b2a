"""Tests of serving/signatures.py without a model: the score formula. The
signatures of a real export are tested in tests/exported_model_signatures_test.py."""
import numpy as np
import tensorflow as tf

from mtrank.serving import signatures
from mtrank_testing import trainer_util as tu


def test_score_formula_follows_the_config():
    outputs = {"click": tf.constant([0.5, 0.2]), "purchase": tf.constant([0.1, 0.4])}
    product = signatures.ScoreFormula("weighted_product", {"click": 1.0, "purchase": 2.0})
    weighted_sum = signatures.ScoreFormula("weighted_sum", {"click": 1.0, "purchase": 2.0})
    np.testing.assert_allclose(product(outputs).numpy(), [0.5 * 0.01, 0.2 * 0.16], rtol=1e-5)
    np.testing.assert_allclose(weighted_sum(outputs).numpy(), [0.7, 1.0], rtol=1e-6)
    config = tu.small_config(serving={"score": {"form": "weighted_sum",
                                                "weights": {"dwell": 0.5, "click": 2.0}}})
    assert signatures.score_formula(config) == signatures.ScoreFormula(
        "weighted_sum", {"dwell": 0.5, "click": 2.0}, "score")
    renamed = tu.small_config(tasks=[dict(tu.CONFIG_DICT["tasks"][0], name="score")])
    assert signatures.score_formula(renamed).output == "fused_score"
