"""A learnable ceiling for simulated logs: the truth with every user's latent
vectors fitted from the training days instead of known.

The truth AUC (simulator/truth.py) scores the probabilities the logs were
drawn with. No model trained on the logs can reach it: the users' latent
vectors behind the click and purchase affinities are seen only through their
few training impressions (users grow with the logs, about 20 impressions
each at any size). This ceiling keeps everything else the simulator knows
(item vectors, context effects, biases, price sensitivity) and replaces each
user's vectors by their maximum a posteriori estimate from the train days'
clicks and purchases under the simulator's own prior: what a model that had
learnt all but the users perfectly would rank with. It is an estimate, not a
bound (a posterior mean would do slightly better than the MAP point), but
unlike the truth it is within reach of a model.

The file it writes has the truth file's format (p_<type> and
p_<type>_no_position per eval impression), so truth.truth_auc scores it.
"""
from __future__ import annotations

import os

import numpy as np

from mtrank.simulator import logs

CEILING_FILE_NAME = "ceiling.jsonl.gz"
_PRIOR_PRECISION = np.sqrt(logs.LATENT_DIM)  # the latent components' variance is dim^-1/2
_ADAM_STEPS = 200
_ADAM_LEARNING_RATE = 0.05


def fit_user_vectors(users: np.ndarray, item_vectors: np.ndarray, offset: np.ndarray,
                     scale: np.ndarray, outcome: np.ndarray, n_users: int) -> np.ndarray:
    """MAP estimates of per-user vectors u, one row per user, under
    outcome_i ~ Bernoulli(scale_i * sigmoid(offset_i + u[users_i] . item_vectors_i))
    and the simulator's Gaussian prior, by full-batch Adam (the objective
    is a sum of independent per-user terms, so all users fit at once)."""
    dim = item_vectors.shape[1]
    estimate = np.zeros((n_users, dim))
    first_moment = np.zeros_like(estimate)
    second_moment = np.zeros_like(estimate)
    positive = outcome.astype(bool)
    for step in range(1, _ADAM_STEPS + 1):
        logit = offset + np.einsum("ij,ij->i", estimate[users], item_vectors)
        sigmoid = 1.0 / (1.0 + np.exp(-logit))
        # d log-likelihood / d logit of Bernoulli(scale * sigmoid(logit)).
        d_logit = np.where(positive, 1.0 - sigmoid,
                           -scale * sigmoid * (1.0 - sigmoid) / (1.0 - scale * sigmoid))
        gradient = np.stack([np.bincount(users, weights=d_logit * item_vectors[:, k],
                                         minlength=n_users) for k in range(dim)],
                            axis=1) - _PRIOR_PRECISION * estimate
        first_moment = 0.9 * first_moment + 0.1 * gradient
        second_moment = 0.999 * second_moment + 0.001 * gradient ** 2
        estimate += _ADAM_LEARNING_RATE * (first_moment / (1 - 0.9 ** step)) / (
            np.sqrt(second_moment / (1 - 0.999 ** step)) + 1e-8)
    return estimate


def fitted_probabilities(drawn: logs.Simulation, train: np.ndarray) -> "logs._Probabilities":
    """The simulator's probabilities of every impression with the users'
    vectors fitted on the impressions where `train` is true."""
    population, imps, truth = drawn.population, drawn.impressions, drawn.probabilities
    kind, impression_of = drawn.events[0], drawn.events[1]
    outcomes = {}
    for feedback in ("click", "purchase"):
        happened = np.zeros(len(imps.user), bool)
        happened[impression_of[kind == logs.FEEDBACK_TYPES.index(feedback) + 1]] = True
        outcomes[feedback] = happened
    terms = logs._logit_terms(population, imps)
    n_users = len(population.user_vec)
    item_vec = population.item_vec[imps.item]
    user_vec = fit_user_vectors(
        imps.user[train], item_vec[train], (terms.click + truth.biases.click)[train],
        terms.position_factor[train], outcomes["click"][train], n_users)
    # Purchases follow clicks: the purchase-only vectors fit on clicked
    # train impressions, with the fitted click affinity in the offset.
    clicked = train & outcomes["click"]
    affinity = np.einsum("ij,ij->i", user_vec[imps.user], item_vec)
    user_buy_vec = fit_user_vectors(
        imps.user[clicked], population.item_buy_vec[imps.item[clicked]],
        (logs.PURCHASE_AFFINITY_WEIGHT * affinity + terms.purchase
         + truth.biases.purchase)[clicked],
        np.ones(int(clicked.sum())), outcomes["purchase"][clicked], n_users)
    return logs._probabilities(population, imps, user_vec, user_buy_vec, truth.biases)


def write_ceiling(out_dir: str, impressions: int, days: int, seed: int,
                  eval_days: int = 1, start_date: str = logs.START_DATE) -> str:
    """Writes out_dir/ceiling.jsonl.gz for the logs `simulate` writes with
    these arguments: the eval impressions (the last `eval_days` UTC days, the
    pipeline's time split) with the probabilities of users fitted on the
    days before. Returns its path."""
    drawn = logs.draw(np.random.default_rng(seed), impressions, days, start_date)
    imps = drawn.impressions
    day = imps.ts // logs.MS_PER_DAY
    is_eval = day > day.max() - eval_days
    path = os.path.join(out_dir, CEILING_FILE_NAME)
    logs.write_probabilities(path, imps, fitted_probabilities(drawn, ~is_eval),
                             np.flatnonzero(is_eval))
    return path
