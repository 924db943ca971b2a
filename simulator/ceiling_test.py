"""The learnable ceiling: users' latent vectors fitted from the train days,
between a model of the context alone and the truth."""
import gzip
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from mtrank.simulator import ceiling, logs


def test_fit_recovers_vectors_of_users_with_many_observations_and_the_prior_mean_without():
    rng = np.random.default_rng(0)
    n_users, dim, per_user = 20, 4, 4000
    true_vectors = rng.normal(0.0, 1.0, size=(n_users, dim))
    users = np.repeat(np.arange(n_users - 1), per_user)  # the last user is never seen
    item_vectors = rng.normal(0.0, 1.0, size=(len(users), dim))
    offset = rng.normal(-1.0, 0.5, size=len(users))
    scale = rng.uniform(0.3, 1.0, size=len(users))  # like the position factor
    p = scale / (1.0 + np.exp(-(offset + np.einsum("ij,ij->i", true_vectors[users], item_vectors))))
    outcome = rng.random(len(users)) < p

    fitted = ceiling.fit_user_vectors(users, item_vectors, offset, scale, outcome, n_users)

    assert np.abs(fitted[:-1] - true_vectors[:-1]).max() < 0.25
    np.testing.assert_array_equal(fitted[-1], 0.0)


def test_ceiling_ranks_clicks_between_the_context_alone_and_the_truth():
    impressions, days = 50000, 7
    drawn = logs.draw(np.random.default_rng(0), impressions, days)
    imps = drawn.impressions
    day = imps.ts // logs.MS_PER_DAY
    is_eval = day == day.max()
    kind, impression_of = drawn.events[0], drawn.events[1]
    clicked = np.zeros(impressions, bool)
    clicked[impression_of[kind == 1]] = True

    def click_auc(probabilities):
        return roc_auc_score(clicked[is_eval], probabilities.click_no_position[is_eval])

    fitted = click_auc(ceiling.fitted_probabilities(drawn, ~is_eval))
    # Nothing to fit from: every user at the prior mean, the context alone.
    context = click_auc(ceiling.fitted_probabilities(drawn, np.zeros(impressions, bool)))
    truth = click_auc(drawn.probabilities)
    assert context + 0.01 < fitted < truth - 0.03


def test_ceiling_file_has_the_truth_files_rows_of_the_eval_days(tmp_path):
    impressions, days, seed = 3000, 4, 2
    logs.simulate(str(tmp_path), impressions=impressions, days=days, seed=seed)
    path = ceiling.write_ceiling(str(tmp_path), impressions, days, seed, eval_days=2)

    with gzip.open(tmp_path / logs.TRUTH_FILE_NAME, "rt") as f:
        truth = [json.loads(line) for line in f]
    last_day = max(row["ts"][:10] for row in truth)
    eval_days = {last_day, str(np.datetime64(last_day) - 1)}
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    assert {(r["request_id"], r["item_id"]) for r in rows} == {
        (r["request_id"], r["item_id"]) for r in truth if r["ts"][:10] in eval_days}
    assert set(rows[0]) == set(truth[0])
    assert all(0.0 < r["p_purchase_no_position"] < r["p_click_no_position"] < 1.0 for r in rows)
