"""Built-in log simulator: writes interaction logs in log contract v1.

It lets the pipeline be tried end to end without real data, and because the
generating probabilities are known (the truth file), it says how good a model
could possibly be on the logs it trained on.

The model behind the logs: users and items have latent vectors; a request
shows 5-10 items to one user; a click depends on the user-item affinity,
context effects (device x item category, hour of day, country, user segment,
item quality) and a position bias; purchases, likes and dwell times follow
only clicks and depend on further affinities and the item's price. Every
parameter is drawn from the seed, so a seed fixes the logs byte for byte.

See docs/log-contract.md for the format.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import gzip
import json
import math
import os
from typing import Dict, List, Optional

import numpy as np

TRUTH_FILE_NAME = "truth.jsonl.gz"
EVENT_FILE_GLOB = "events-*.jsonl.gz"
FEEDBACK_TYPES = ("click", "purchase", "like", "dwell")

LATENT_DIM = 8
SEGMENTS = ("new", "casual", "regular", "power")
SEGMENT_SHARE = (0.2, 0.4, 0.3, 0.1)
SEGMENT_CLICK_BIAS = (-0.3, 0.0, 0.2, 0.5)
SEGMENT_LIKE_BIAS = (-0.2, -0.1, 0.1, 0.4)
CATEGORIES = (
    "books", "electronics", "fashion", "home", "garden", "toys", "sports", "beauty",
    "grocery", "music", "movies", "games", "automotive", "health", "pets", "office",
    "jewelry", "shoes", "baby", "tools",
)
TAGS = tuple(f"tag_{i:02d}" for i in range(50))
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_SHARE = (0.6, 0.3, 0.1)
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")
COUNTRY_SHARE = (0.3, 0.1, 0.1, 0.08, 0.12, 0.15, 0.08, 0.07)
REQUEST_SIZE = (5, 10)  # items shown per request, inclusive
START_DATE = "2026-11-01"

# Target rates the biases are calibrated to (fractions of impressions).
CLICK_RATE = 0.07
PURCHASE_RATE = 0.01
LIKE_GIVEN_CLICK = 0.25
DWELL_GIVEN_CLICK = 0.9
POSITION_DECAY = 0.7
# The click affinity's weight in the purchase logit (beside a purchase-only affinity).
PURCHASE_AFFINITY_WEIGHT = 0.7

MS_PER_S = 1000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000

# One encoder for all lines: compact, and cheaper than json.dumps per line.
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate_bias(logits: np.ndarray, weights: np.ndarray, target: float) -> float:
    """The bias b with mean(weights * sigmoid(b + logits)) == target.

    Calibrating on the drawn population (rather than fixing b) keeps the
    rates on target whatever the size and seed.
    """
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        if np.mean(weights * _sigmoid(mid + logits)) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _truncated_exponential(rng: np.random.Generator, mean: float, upper: float,
                           size: int) -> np.ndarray:
    """Delays that are mostly short but bounded by `upper` (inverse CDF of an
    exponential truncated at `upper`)."""
    u = rng.random(size)
    return -mean * np.log1p(-u * (1.0 - np.exp(-upper / mean)))


def _latent(rng: np.random.Generator, n: int) -> np.ndarray:
    # Component scale dim^-1/4, so a dot product of two vectors has std 1.
    return rng.normal(0.0, LATENT_DIM ** -0.25, size=(n, LATENT_DIM))


def _request_sizes(rng: np.random.Generator, impressions: int) -> np.ndarray:
    """Sizes in REQUEST_SIZE summing to exactly `impressions` (one smaller
    request if there are fewer impressions than the smallest size)."""
    low, high = REQUEST_SIZE
    if impressions < low:
        return np.array([impressions])
    sizes = rng.integers(low, high + 1, size=impressions // low + 1)
    count = int(np.searchsorted(np.cumsum(sizes), impressions)) + 1
    sizes = sizes[:count]
    # The first `count` requests overshoot by less than `high`: take items
    # off requests above the minimum; if all are at the minimum, drop the
    # last request and add the shortfall to requests below the maximum.
    excess = int(sizes.sum()) - impressions
    while excess:
        adjustable = np.flatnonzero(sizes > low if excess > 0 else sizes < high)
        if not len(adjustable):
            excess -= int(sizes[-1])
            sizes = sizes[:-1]
            continue
        change = adjustable[: abs(excess)]
        sizes[change] -= np.sign(excess)
        excess -= int(np.sign(excess)) * len(change)
    return sizes


def _distinct_items(rng: np.random.Generator, request_of: np.ndarray,
                    popularity: np.ndarray) -> np.ndarray:
    """Items by popularity, redrawn until no request shows an item twice (so
    (request_id, item_id) identifies an impression)."""
    items = rng.choice(len(popularity), size=len(request_of), p=popularity)
    while True:
        order = np.lexsort((items, request_of))
        repeated = (request_of[order][1:] == request_of[order][:-1]) & (
            items[order][1:] == items[order][:-1])
        duplicates = order[1:][repeated]
        if not len(duplicates):
            return items
        items[duplicates] = rng.choice(len(popularity), size=len(duplicates), p=popularity)


def _rfc3339(ts_ms: np.ndarray) -> List[str]:
    """Milliseconds since the epoch -> "YYYY-MM-DDTHH:MM:SS.mmmZ"."""
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def _write_gzip_lines(path: str, lines: List[str]) -> None:
    # mtime=0 makes the compressed bytes, not only the content, reproducible.
    # Level 6 makes event files a quarter smaller than level 1 and costs
    # under a second more per 200,000 impressions.
    with open(path, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))


def _significant(values: np.ndarray) -> List[float]:
    # Six significant digits keep the truth file small and lose nothing a
    # metric computed from it could notice.
    return [float(f"{v:.6g}") for v in values.tolist()]


@dataclasses.dataclass
class _Population:
    """Users, items and the effects the click and purchase models use; one
    row per user or item, indexed by its number."""

    user_vec: np.ndarray        # latent vectors of the click affinity
    user_buy_vec: np.ndarray    # latent vectors of the purchase-only affinity
    user_segment: np.ndarray    # index into SEGMENTS
    user_age: np.ndarray
    user_activity: np.ndarray   # share of requests
    user_country: np.ndarray    # home country, index into COUNTRIES
    user_device: np.ndarray     # usual device, index into DEVICES
    item_vec: np.ndarray
    item_buy_vec: np.ndarray
    item_category: np.ndarray   # index into CATEGORIES
    item_tags: List[List[str]]
    item_price: np.ndarray
    item_quality: np.ndarray    # click bias of the item
    item_popularity: np.ndarray  # share of impressions
    device_category: np.ndarray  # click bias per (device, category)
    country_bias: np.ndarray
    hour_bias: np.ndarray


def _draw_population(rng: np.random.Generator, impressions: int) -> _Population:
    """Users and items sized to the number of impressions, with their effects."""
    # About 20 impressions per user and 50 per item.
    n_users = max(50, impressions // 20)
    n_items = max(30, impressions // 50)

    user_vec = _latent(rng, n_users)
    user_buy_vec = _latent(rng, n_users)
    user_segment = rng.choice(len(SEGMENTS), size=n_users, p=SEGMENT_SHARE)
    user_age = np.clip(np.round(rng.normal(38, 12, size=n_users)), 18, 80).astype(int)
    user_activity = rng.lognormal(0.0, 1.0, size=n_users)
    user_country = rng.choice(len(COUNTRIES), size=n_users, p=COUNTRY_SHARE)
    user_device = rng.choice(len(DEVICES), size=n_users, p=DEVICE_SHARE)

    # An item's latent vector is partly its category's and its tags', so those
    # features carry signal beyond the item id (and generalise to rare items).
    item_category = rng.integers(len(CATEGORIES), size=n_items)
    category_vec = _latent(rng, len(CATEGORIES))
    tag_vec = _latent(rng, len(TAGS))
    tags = [np.sort(rng.choice(len(TAGS), size=k, replace=False))
            for k in rng.integers(1, 5, size=n_items)]
    item_vec = (0.6 * category_vec[item_category]
                + 0.5 * np.stack([tag_vec[t].mean(axis=0) for t in tags])
                + 0.6 * _latent(rng, n_items))
    item_buy_vec = _latent(rng, n_items)
    item_quality = rng.normal(0.0, 0.4, size=n_items)
    category_log_price = rng.normal(3.0, 0.7, size=len(CATEGORIES))
    item_price = np.maximum(0.5, np.round(np.exp(
        category_log_price[item_category] + rng.normal(0.0, 0.6, size=n_items)), 2))
    # A few items get most impressions.
    popularity = (np.arange(n_items) + 1.0) ** -0.8
    popularity = rng.permutation(popularity / popularity.sum())

    hours = np.arange(24)
    return _Population(
        user_vec=user_vec, user_buy_vec=user_buy_vec, user_segment=user_segment,
        user_age=user_age, user_activity=user_activity / user_activity.sum(),
        user_country=user_country, user_device=user_device,
        item_vec=item_vec, item_buy_vec=item_buy_vec, item_category=item_category,
        item_tags=[[TAGS[t] for t in item_tags] for item_tags in tags],
        item_price=item_price, item_quality=item_quality, item_popularity=popularity,
        device_category=rng.normal(0.0, 0.5, size=(len(DEVICES), len(CATEGORIES))),
        country_bias=rng.normal(0.0, 0.2, size=len(COUNTRIES)),
        hour_bias=0.3 * np.cos(2 * np.pi * (hours - 20) / 24),  # evenings click more
    )


@dataclasses.dataclass
class _Impressions:
    """One row per impression."""

    request: np.ndarray   # request number; numbers grow with time
    position: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray        # milliseconds since the epoch
    device: np.ndarray
    country: np.ndarray
    hour: np.ndarray


def _draw_impressions(rng: np.random.Generator, population: _Population, impressions: int,
                      days: int, first_day: datetime.date) -> _Impressions:
    """Requests spread over `days` days from `first_day`, with their context,
    expanded to one row per item shown."""
    sizes = _request_sizes(rng, impressions)
    n_requests = len(sizes)
    hours = np.arange(24)
    traffic = 1.0 + 0.7 * np.cos(2 * np.pi * (hours - 19) / 24)  # busiest in the evening
    request_ts = (np.datetime64(first_day, "ms").astype(np.int64)
                  + rng.integers(days, size=n_requests) * MS_PER_DAY
                  + rng.choice(24, size=n_requests, p=traffic / traffic.sum()) * MS_PER_HOUR
                  + rng.integers(MS_PER_HOUR, size=n_requests))
    # Request numbers (and so ids) grow with time, which makes logs readable.
    request_ts.sort()
    request_user = rng.choice(len(population.user_activity), size=n_requests,
                              p=population.user_activity)
    # Users are mostly at home on their usual device.
    home = rng.random(n_requests) < 0.95
    request_country = np.where(home, population.user_country[request_user],
                               rng.choice(len(COUNTRIES), size=n_requests, p=COUNTRY_SHARE))
    usual = rng.random(n_requests) < 0.7
    request_device = np.where(usual, population.user_device[request_user],
                              rng.choice(len(DEVICES), size=n_requests, p=DEVICE_SHARE))

    # Request r shows sizes[r] distinct items at positions 0..sizes[r]-1.
    request = np.repeat(np.arange(n_requests), sizes)
    return _Impressions(
        request=request,
        position=np.arange(impressions) - np.repeat(np.cumsum(sizes) - sizes, sizes),
        user=request_user[request],
        item=_distinct_items(rng, request, population.item_popularity),
        ts=request_ts[request],
        device=request_device[request],
        country=request_country[request],
        hour=(request_ts[request] % MS_PER_DAY) // MS_PER_HOUR,
    )


@dataclasses.dataclass
class _LogitTerms:
    """Each model's logit without its user-item affinities and its bias: the
    part a model could learn from the context and item alone."""

    click: np.ndarray
    purchase: np.ndarray
    like: np.ndarray
    position_factor: np.ndarray  # multiplies the click probability


@dataclasses.dataclass
class _Biases:
    """The biases calibrated to the target rates."""

    click: float
    purchase: float
    like: float


@dataclasses.dataclass
class _Probabilities:
    """The generating probabilities of each impression."""

    click_no_position: np.ndarray
    click: np.ndarray
    purchase_given_click: np.ndarray
    like_given_click: np.ndarray
    affinity: np.ndarray  # also drives dwell time
    biases: _Biases


def _logit_terms(population: _Population, imps: _Impressions) -> _LogitTerms:
    user, item = imps.user, imps.item
    segment = population.user_segment[user]
    click = (population.item_quality[item]
             + population.device_category[imps.device, population.item_category[item]]
             + population.hour_bias[imps.hour]
             + population.country_bias[imps.country]
             + np.take(SEGMENT_CLICK_BIAS, segment))
    # Older users mind prices less.
    log_price = np.log(population.item_price)
    price_z = (log_price - log_price.mean()) / (log_price.std() + 1e-9)
    price_sensitivity = np.clip(1.0 - 0.02 * (population.user_age[user] - 38), 0.2, 2.0)
    return _LogitTerms(click=click, purchase=-price_sensitivity * price_z[item],
                       like=np.take(SEGMENT_LIKE_BIAS, segment),
                       position_factor=(1.0 + imps.position) ** -POSITION_DECAY)


def _probabilities(population: _Population, imps: _Impressions,
                   user_vec: Optional[np.ndarray] = None,
                   user_buy_vec: Optional[np.ndarray] = None,
                   biases: Optional[_Biases] = None) -> _Probabilities:
    """The click, purchase and like models, with biases calibrated to the
    target rates. `user_vec`, `user_buy_vec` and `biases` replace the
    population's vectors and the calibration (simulator/ceiling.py puts
    fitted user vectors in)."""
    terms = _logit_terms(population, imps)
    user, item = imps.user, imps.item
    user_vec = population.user_vec if user_vec is None else user_vec
    user_buy_vec = population.user_buy_vec if user_buy_vec is None else user_buy_vec
    affinity = np.einsum("ij,ij->i", user_vec[user], population.item_vec[item])
    click_logit = terms.click + affinity
    click_bias = (biases.click if biases is not None
                  else _calibrate_bias(click_logit, terms.position_factor, CLICK_RATE))
    p_click_no_position = _sigmoid(click_logit + click_bias)
    p_click = p_click_no_position * terms.position_factor

    purchase_logit = (PURCHASE_AFFINITY_WEIGHT * affinity
                      + np.einsum("ij,ij->i", user_buy_vec[user], population.item_buy_vec[item])
                      + terms.purchase)
    like_logit = 1.2 * affinity + terms.like
    if biases is None:
        biases = _Biases(
            click=click_bias,
            purchase=_calibrate_bias(purchase_logit, p_click, PURCHASE_RATE),
            like=_calibrate_bias(like_logit, p_click, LIKE_GIVEN_CLICK * CLICK_RATE))
    return _Probabilities(
        click_no_position=p_click_no_position, click=p_click,
        purchase_given_click=_sigmoid(purchase_logit + biases.purchase),
        like_given_click=_sigmoid(like_logit + biases.like), affinity=affinity, biases=biases)


def _delay_ms(rng: np.random.Generator, mean_s: float, upper_s: float, size: int) -> np.ndarray:
    """Whole-millisecond delays of about `mean_s` seconds, at most `upper_s`."""
    return np.round(MS_PER_S * _truncated_exponential(rng, mean_s, upper_s, size)).astype(np.int64)


def _draw_events(rng: np.random.Generator, population: _Population, imps: _Impressions,
                 probs: _Probabilities):
    """Every event as parallel arrays (kind, impression, ts, value): kind 0 is
    the impression itself, kind k > 0 is FEEDBACK_TYPES[k - 1]; value is NaN
    for events without one."""
    n = len(imps.ts)
    # Everything but the click needs a click first.
    clicked = rng.random(n) < probs.click
    purchased = clicked & (rng.random(n) < probs.purchase_given_click)
    liked = clicked & (rng.random(n) < probs.like_given_click)
    dwelled = clicked & (rng.random(n) < DWELL_GIVEN_CLICK)

    click_ts = imps.ts + _delay_ms(rng, 20.0, 120.0, n)
    like_ts = click_ts + _delay_ms(rng, 60.0, 300.0, n)
    purchase_ts = click_ts + _delay_ms(rng, 1800.0, 6 * 3600.0, n)
    # Dwell is reported when the user leaves the item, so its ts is the
    # click's plus the dwell time; engaged users (high affinity) and desktop
    # users stay longer.
    desktop = imps.device == DEVICES.index("desktop")
    dwell_s = np.round(np.clip(rng.lognormal(
        np.log(25.0) + 0.6 * probs.affinity + 0.2 * desktop, 0.7), 1.0, 600.0), 1)
    dwell_ts = click_ts + np.round(MS_PER_S * dwell_s).astype(np.int64)

    no_value = np.full(n, np.nan)
    # A purchase's value is the price paid.
    parts = [(np.ones(n, bool), imps.ts, no_value),
             (clicked, click_ts, no_value),
             (purchased, purchase_ts, population.item_price[imps.item]),
             (liked, like_ts, no_value),
             (dwelled, dwell_ts, dwell_s)]
    kind = np.concatenate([np.full(mask.sum(), k) for k, (mask, _, _) in enumerate(parts)])
    impression = np.concatenate([np.flatnonzero(mask) for mask, _, _ in parts])
    ts = np.concatenate([part_ts[mask] for mask, part_ts, _ in parts])
    value = np.concatenate([part_value[mask] for mask, _, part_value in parts])
    return kind, impression, ts, value


def _impression_features(population: _Population, imps: _Impressions) -> List[Dict]:
    """The `features` object of each impression."""
    segment = population.user_segment[imps.user]
    columns = zip(imps.device.tolist(), imps.country.tolist(), imps.hour.tolist(),
                  segment.tolist(), population.user_age[imps.user].tolist(),
                  population.item_category[imps.item].tolist(),
                  population.item_price[imps.item].tolist(), imps.item.tolist())
    return [
        {"device": DEVICES[d], "country": COUNTRIES[c], "hour": h,
         "user_segment": SEGMENTS[s], "user_age": a, "item_category": CATEGORIES[k],
         "item_price": p, "item_tags": population.item_tags[i]}
        for d, c, h, s, a, k, p, i in columns
    ]


def _shuffle_feedback(seed: int, feedback: str, kind: np.ndarray, impression_of: np.ndarray,
                      ts: np.ndarray, impression_ts: np.ndarray) -> None:
    """Moves every `feedback` event to a random impression, keeping its delay,
    so that task's labels keep their rate and lose all signal (a logging bug
    to test the validation gates with). Its own generator leaves every other
    draw, and so every other event, as it was."""
    if feedback not in FEEDBACK_TYPES:
        raise ValueError(f"shuffle_feedback: {feedback!r} is not one of {list(FEEDBACK_TYPES)}")
    moved = np.flatnonzero(kind == FEEDBACK_TYPES.index(feedback) + 1)
    targets = np.random.default_rng([seed, 1]).choice(
        len(impression_ts), size=len(moved), replace=False)
    ts[moved] += impression_ts[targets] - impression_ts[impression_of[moved]]
    impression_of[moved] = targets


@dataclasses.dataclass
class Simulation:
    """What one generator draws, before it is written as logs."""

    population: _Population
    impressions: _Impressions
    probabilities: _Probabilities
    events: tuple  # (kind, impression, ts, value): see _draw_events


def draw(rng: np.random.Generator, impressions: int, days: int,
         start_date: str = START_DATE) -> Simulation:
    """Users, items, impressions, their probabilities and events, drawn from
    `rng` in the order `simulate` writes them from its seed."""
    if impressions < 1 or days < 1:
        raise ValueError("impressions and days must be at least 1")
    population = _draw_population(rng, impressions)
    imps = _draw_impressions(rng, population, impressions, days,
                             datetime.date.fromisoformat(start_date))
    probs = _probabilities(population, imps)
    return Simulation(population, imps, probs, _draw_events(rng, population, imps, probs))


def request_id(number: int) -> str:
    return f"r{number:07d}"


def item_id(number: int) -> str:
    return f"i{number:05d}"


def write_probabilities(path: str, imps: _Impressions, probs: _Probabilities,
                        rows: np.ndarray) -> None:
    """Writes the truth file's format for the impressions numbered `rows`:
    request_id, item_id, ts, and p_<type> and p_<type>_no_position. Every
    feedback follows a click, so each is p(click) x p(type | click), with
    and without the position factor."""
    given_click = {"click": 1.0, "purchase": probs.purchase_given_click,
                   "like": probs.like_given_click, "dwell": DWELL_GIVEN_CLICK}
    columns = {}
    for feedback in FEEDBACK_TYPES:
        p_given_click = np.broadcast_to(given_click[feedback], probs.click.shape)[rows]
        columns[f"p_{feedback}"] = _significant(probs.click[rows] * p_given_click)
        columns[f"p_{feedback}_no_position"] = _significant(
            probs.click_no_position[rows] * p_given_click)
    names = list(columns)
    _write_gzip_lines(path, [
        _to_json({"request_id": request_id(r), "item_id": item_id(i), "ts": t,
                  **dict(zip(names, values))})
        for r, i, t, *values in zip(imps.request[rows].tolist(), imps.item[rows].tolist(),
                                    _rfc3339(imps.ts[rows]), *columns.values())])


def simulate(out_dir: str, impressions: int = 20000, days: int = 7, seed: int = 0,
             start_date: str = START_DATE, shuffle_feedback: Optional[str] = None) -> dict:
    """Writes simulated logs to `out_dir` and returns counts of what was written.

    Writes out_dir/events-YYYY-MM-DD.jsonl.gz (one gzip JSON Lines file per
    UTC day holding the events of that day, shuffled so files are unsorted)
    and out_dir/truth.jsonl.gz (per impression: request_id, item_id, ts and
    the generating probabilities p_click, p_purchase, p_like, p_dwell, all
    unconditional, and each as p_<type>_no_position, without the position
    factor: what a position-free model can reach). Impressions fall on the `days`
    days from `start_date`; feedback to the last day's impressions can land in
    one more day's file. Event files already in `out_dir` are replaced, so the
    glob `out_dir/events-*.jsonl.gz` always means one simulation.
    `shuffle_feedback` names a feedback type whose events go to random
    impressions: that task's labels become noise (the truth file is unchanged).

    Returns {"impressions": N, "events": lines written to event files,
    "feedback": {type: count}, "files": [event file paths, sorted]}.
    """
    rng = np.random.default_rng(seed)
    drawn = draw(rng, impressions, days, start_date)
    population, imps, probs = drawn.population, drawn.impressions, drawn.probabilities
    kind, impression_of, ts, value = drawn.events
    if shuffle_feedback is not None:
        _shuffle_feedback(seed, shuffle_feedback, kind, impression_of, ts, imps.ts)
    day = ts // MS_PER_DAY
    order = np.lexsort((rng.random(len(ts)), day))  # by day, shuffled within it

    request_ids = [request_id(r) for r in range(imps.request[-1] + 1)]
    user_ids = [f"u{u:06d}" for u in range(len(population.user_vec))]
    item_ids = [item_id(i) for i in range(len(population.item_vec))]
    imp_request = [request_ids[r] for r in imps.request.tolist()]
    imp_user = [user_ids[u] for u in imps.user.tolist()]
    imp_item = [item_ids[i] for i in imps.item.tolist()]
    positions = imps.position.tolist()
    features = _impression_features(population, imps)

    lines = []
    for ts_text, k, i, v in zip(_rfc3339(ts[order]), kind[order].tolist(),
                                impression_of[order].tolist(), value[order].tolist()):
        event = {"type": FEEDBACK_TYPES[k - 1] if k else "impression", "ts": ts_text,
                 "request_id": imp_request[i], "user_id": imp_user[i], "item_id": imp_item[i]}
        if k == 0:
            event["position"] = positions[i]
            event["features"] = features[i]
        elif not math.isnan(v):
            event["value"] = v
        lines.append(_to_json(event))

    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, EVENT_FILE_GLOB)):
        os.remove(stale)
    files = []
    for d, start, count in zip(*np.unique(day[order], return_index=True, return_counts=True)):
        path = os.path.join(out_dir, f"events-{np.datetime64(int(d), 'D')}.jsonl.gz")
        _write_gzip_lines(path, lines[start:start + count])
        files.append(path)

    write_probabilities(os.path.join(out_dir, TRUTH_FILE_NAME), imps, probs,
                        np.arange(impressions))

    feedback_counts = np.bincount(kind, minlength=len(FEEDBACK_TYPES) + 1)[1:]
    return {
        "impressions": impressions,
        "events": len(lines),
        "feedback": {t: int(c) for t, c in zip(FEEDBACK_TYPES, feedback_counts)},
        "files": files,
    }
