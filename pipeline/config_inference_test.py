"""Tests of inferring a starting config from logs."""
import gzip
import json
import logging

import jsonschema
import pytest
import yaml

from mtrank.components import labelling
from mtrank.base import log_contract
from mtrank.base import config as config_lib
from mtrank.pipeline import config_inference as ci
from mtrank.base.config import ConfigError


def _imp(i, features, user=None, item=None):
    return {"type": "impression", "ts": f"2024-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "request_id": f"r{i}", "user_id": user or f"u{i % 7}",
            "item_id": item or f"i{i % 11}", "position": i % 5, "features": features}


def _fb(type_, i):
    return {"type": type_, "ts": "2024-03-01T11:00:00Z", "request_id": f"r{i}",
            "user_id": f"u{i % 7}", "item_id": f"i{i % 11}"}


def _write(path, events, extra_lines=(), compress=True):
    data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    data += b"".join(line + b"\n" for line in extra_lines)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return str(path)


N = 40
MANY = ci.VOCABULARY_MAX_DISTINCT + 1


def _sample_events():
    events = []
    for i in range(N):
        features = {
            "country": ["DE", "FR", "US"][i % 3],  # few distinct strings
            "age": 20 + i,  # always ints
            "price": 9.5 if i == 5 else 10,  # one float among ints
            "tags": ["t%d" % j for j in range(i % 4)],  # lists of strings, longest 3
            "cats": [i, i + 1],  # lists of ints
            "hour": None if i % 2 else i % 24,  # some nulls
            "position": 3,  # reserved: never a feature
        }
        events.append(_imp(i, features))
    events += [_fb("click", i) for i in range(0, N, 2)]
    events += [_fb("purchase", i) for i in range(0, N, 10)]
    events += [_fb("add-to-cart", 1)]
    return events


DEAD_LINES = [
    b"not json at all",
    b"[1, 2]",
    # Dead-lettered (missing user_id): its feature and feedback type must be ignored.
    json.dumps({"type": "impression", "ts": "2024-03-01T10:00:00Z", "request_id": "x",
                "item_id": "i", "features": {"ghost": "boo"}}).encode(),
    json.dumps({"type": "ghost_feedback", "ts": "bad", "request_id": "x",
                "user_id": "u", "item_id": "i"}).encode(),
]


@pytest.fixture(scope="module")
def inferred(tmp_path_factory):
    path = tmp_path_factory.mktemp("logs") / "logs.jsonl.gz"
    _write(path, _sample_events(), DEAD_LINES)
    return ci.infer_config(str(path), model_name="inferred")


def test_model_name(inferred):
    assert inferred.model_name == "inferred"


def test_model_is_the_best_measured_on_simulated_logs(inferred):
    assert inferred.model.architecture == "shared_bottom"
    assert inferred.model.cross_layers == 2
    assert inferred.training.lazy_adam
    assert inferred.training.ema_momentum == ci.INFERRED_EMA_MOMENTUM > 0


def test_funnel_roots_get_a_position_tower_when_impressions_give_positions(tmp_path):
    config = ci.infer_config(_funnel_logs(tmp_path, {"click": EVERY_2ND,
                                                     "purchase": EVERY_8TH,
                                                     "share": range(0, 10_000, 3)}))
    assert _depends_on(config) == {"click": None, "share": None, "purchase": "click"}
    assert config.model.position_tasks == ["click", "share"]


@pytest.mark.parametrize("with_position", [0.4, 0.5])
def test_no_position_tower_when_most_impressions_have_no_position(tmp_path, with_position):
    n = 200
    events = [_imp(i, {"device": "m"}) for i in range(n)]
    for i, event in enumerate(events):
        if i >= with_position * n:
            del event["position"]
    events += [_fb("click", i) for i in range(0, n, 2)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    assert config.model.position_tasks == (["click"] if with_position >= 0.5 else [])


def test_feature_set(inferred):
    names = [f.name for f in inferred.features]
    assert names[:2] == ["user_id", "item_id"]
    assert set(names) == {"user_id", "item_id", "country", "age", "price", "tags", "cats",
                          "hour"}
    assert "position" not in names and "ghost" not in names


def test_strings_with_few_values_get_a_vocabulary(inferred):
    country = inferred.feature("country")
    assert (country.kind, country.dtype, country.encoding) == ("categorical", "string",
                                                              "vocabulary")
    assert country.vocab_size == 3


def test_strings_with_many_values_are_hashed(tmp_path):
    events = [_imp(i, {"query": f"q{i}"}) for i in range(MANY)] + [_fb("click", 0)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    query = config.feature("query")
    assert (query.kind, query.dtype, query.encoding) == ("categorical", "string", "hashing")
    assert query.hash_buckets >= 2 * MANY


def test_exactly_the_vocabulary_limit_still_gets_a_vocabulary(tmp_path):
    n = ci.VOCABULARY_MAX_DISTINCT
    events = [_imp(i, {"query": f"q{i}"}) for i in range(n)] + [_fb("click", 0)]
    query = ci.infer_config(_write(tmp_path / "l.gz", events)).feature("query")
    assert query.encoding == "vocabulary" and query.vocab_size == n


def test_all_int_numbers_are_numeric_int64(inferred):
    age = inferred.feature("age")  # 40 distinct values: a quantity, not an id
    assert (age.kind, age.dtype) == ("numeric", "int64")


def test_few_distinct_ints_are_categorical_ids(inferred):
    hour = inferred.feature("hour")  # 12 distinct values; nulls do not change the kind
    assert (hour.kind, hour.dtype, hour.encoding) == ("categorical", "int64", "vocabulary")
    assert hour.vocab_size == 12


def test_any_float_makes_numeric_float(inferred):
    price = inferred.feature("price")
    assert (price.kind, price.dtype) == ("numeric", "float")


def test_list_of_strings_is_multivalent_string_with_longest_len(inferred):
    tags = inferred.feature("tags")
    assert (tags.kind, tags.dtype) == ("multivalent", "string")
    assert tags.max_len == 3  # lists of 0..3 values


def test_list_of_ints_is_multivalent_int64(inferred):
    cats = inferred.feature("cats")
    assert (cats.kind, cats.dtype) == ("multivalent", "int64")
    assert cats.max_len == 2
    assert cats.encoding == "vocabulary"  # N+1 distinct ids: 0..N, few enough
    assert cats.vocab_size == N + 1


def test_multivalent_max_len_capped_at_32(tmp_path):
    events = [_imp(0, {"words": [f"w{j}" for j in range(50)]}),
              _imp(1, {"words": ["a"]}), _fb("click", 0)]
    words = ci.infer_config(_write(tmp_path / "l.gz", events)).feature("words")
    assert words.kind == "multivalent" and words.max_len == 32


def test_ids_are_hashed_with_room(inferred):
    for name, distinct in (("user_id", 7), ("item_id", 11)):
        feature = inferred.feature(name)
        assert (feature.kind, feature.dtype, feature.encoding) == (
            "categorical", "string", "hashing")
        assert feature.hash_buckets >= 2 * distinct


def test_ids_with_many_values(tmp_path):
    n = 300
    events = [_imp(i, {}, user=f"user{i}", item=f"item{i % 150}") for i in range(n)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events + [_fb("click", 0)]))
    assert config.feature("user_id").hash_buckets >= 2 * n
    assert config.feature("item_id").hash_buckets >= 2 * 150
    assert config.feature("user_id").hash_buckets > config.feature("item_id").hash_buckets


def test_one_binary_task_per_feedback_type(inferred):
    tasks = {t.feedback: t for t in inferred.tasks}
    assert set(tasks) == {"click", "purchase", "add-to-cart"}
    assert all(t.type == "binary" for t in tasks.values())
    # Feedback at 11:00 for impressions between 10:00 and 10:00:39: delays
    # just under an hour, so the one-hour standard window.
    assert all(t.label_window_s == 3600 for t in tasks.values())
    assert tasks["click"].name == "click"
    assert tasks["add-to-cart"].name == "add_to_cart"
    # Most frequent feedback first.
    assert [t.feedback for t in inferred.tasks] == ["click", "purchase", "add-to-cart"]


def test_dead_letter_lines_are_ignored(inferred, tmp_path):
    clean = ci.infer_config(_write(tmp_path / "clean.gz", _sample_events()),
                            model_name="inferred")
    assert clean == inferred


def test_no_impressions_is_an_error(tmp_path):
    path = _write(tmp_path / "l.gz", [_fb("click", i) for i in range(3)], DEAD_LINES)
    with pytest.raises(ConfigError, match="impression"):
        ci.infer_config(path)


def test_no_feedback_is_an_error(tmp_path):
    path = _write(tmp_path / "l.gz", [_imp(i, {"a": 1}) for i in range(3)], DEAD_LINES)
    with pytest.raises(ConfigError, match="feedback"):
        ci.infer_config(path)


def test_no_files_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ci.infer_config(str(tmp_path / "*.gz"))


def test_reads_plain_and_gzip_files_of_a_directory(tmp_path):
    _write(tmp_path / "a.jsonl", [_imp(0, {"plain": 1})], compress=False)
    _write(tmp_path / "b.data", [_imp(1, {"zipped": "x"}), _fb("click", 1)])
    config = ci.infer_config(str(tmp_path))
    assert config.feature("plain").dtype == "int64"
    assert config.feature("zipped").kind == "categorical"


def test_sample_reads_whole_files_until_it_has_sample_lines(tmp_path):
    _write(tmp_path / "day1.gz", [_imp(0, {"a": 1}), _imp(1, {"b": 1}), _fb("click", 0)])
    _write(tmp_path / "day2.gz", [_imp(2, {"late": "x"}), _fb("like", 2)])
    config = ci.infer_config(str(tmp_path / "day*.gz"), sample_lines=2)
    assert [f.name for f in config.features] == ["user_id", "item_id", "a", "b"]
    assert [t.feedback for t in config.tasks] == ["click"]


def test_one_file_beyond_the_sample_is_read_up_to_its_cap(tmp_path):
    cap = ci.MAX_SAMPLE_FACTOR * 2
    events = [_imp(i, {"a": 1}) for i in range(cap - 1)] + [_fb("click", 0)]
    events += [_imp(cap, {"late": "x"}), _fb("like", cap)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events), sample_lines=2)
    assert [f.name for f in config.features] == ["user_id", "item_id", "a"]
    assert [t.feedback for t in config.tasks] == ["click"]


def test_a_funnel_is_seen_when_a_file_has_its_clicks_after_the_sample_size(tmp_path):
    # Lines out of time order, as in logs merged from several writers: the
    # purchases come first, their clicks after the first sample_lines lines.
    n = 8 * ci.FUNNEL_MIN_IMPRESSIONS
    events = [_imp(i, {"device": "m"}) for i in range(n)]
    events += [_fb("purchase", i) for i in EVERY_8TH if i < n]
    events += [_fb("click", i) for i in EVERY_2ND if i < n]
    path = _write(tmp_path / "l.gz", events)
    config = ci.infer_config(path, sample_lines=n + n // 8 + 1)
    assert _depends_on(config) == {"click": None, "purchase": "click"}


def test_inferred_config_passes_validation_and_round_trips(inferred):
    again = config_lib.config_from_dict(inferred.to_dict())
    assert again == inferred
    assert config_lib.config_from_json(inferred.to_json()) == inferred


def test_every_sampled_impression_converts_with_the_inferred_config(inferred):
    # An inferred config must accept the logs it came from.
    convert = labelling.ImpressionConverter(inferred)
    for event in _sample_events():
        parsed = log_contract.parse_event(json.dumps(event))
        assert isinstance(parsed, log_contract.Event)
        if parsed.is_impression:
            result = convert(parsed, "line")
            assert isinstance(result, labelling.Impression), result.detail


def test_list_of_fractional_numbers_is_left_out(tmp_path):
    # Lists are sets of ids (string or int64); a multivalent int64 feature
    # would dead-letter every impression holding 0.5, so the feature is dropped.
    events = [_imp(i, {"scores": [0.5 + i, 1.25], "n": i}) for i in range(3)] + [
        _fb("click", 0)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    assert [f.name for f in config.features] == ["user_id", "item_id", "n"]
    convert = labelling.ImpressionConverter(config)
    for event in events[:3]:
        parsed = log_contract.parse_event(json.dumps(event))
        assert isinstance(convert(parsed, "line"), labelling.Impression)


def test_inferred_config_survives_the_yaml_a_user_edits(inferred, tmp_path):
    path = str(tmp_path / "config.yaml")
    config_lib.save_config(inferred, path)
    assert config_lib.load_config(path) == inferred


def test_inferred_config_is_valid_under_the_json_schema(inferred):
    # What an editor checks `mtrank init-config`'s output against.
    validator = jsonschema.Draft202012Validator(config_lib.json_schema())
    assert [e.message for e in validator.iter_errors(yaml.safe_load(inferred.to_yaml()))] == []
    broken = yaml.safe_load(inferred.to_yaml())
    broken["features"][0]["kind"] = "dense"
    assert [e.message for e in validator.iter_errors(broken)] == [
        "'dense' is not one of ['categorical', 'numeric', 'multivalent']"]


# --- helpers ----------------------------------------------------------------

CARDINALITIES = [0, 1, 2, 3, 10, 31, 32, 33, 100, 1000, 5000, 10**5, 10**6, 10**9]


def test_embedding_dim_monotone_and_bounded():
    dims = [ci.embedding_dim(c) for c in CARDINALITIES + list(range(0, 5000, 7))]
    assert all(4 <= d <= 32 for d in dims)
    ordered = [ci.embedding_dim(c) for c in sorted(set(CARDINALITIES + list(range(0, 5000, 7))))]
    assert ordered == sorted(ordered)
    assert ci.embedding_dim(0) == 4 and ci.embedding_dim(10**9) == 32
    # About 6 * c^(1/4): 6 * 10000^(1/4) = 60 -> capped; 6 * 16^(1/4) = 12.
    assert ci.embedding_dim(16) == 12
    assert all(isinstance(d, int) for d in dims)


def test_hash_buckets_monotone_power_of_two_and_at_least_twice():
    values = list(range(0, 3000)) + [10**5, 10**6]
    buckets = [ci.hash_buckets(d) for d in values]
    assert buckets == sorted(buckets)
    for distinct, b in zip(values, buckets):
        assert b >= 64
        assert b >= 2 * distinct
        assert b & (b - 1) == 0  # a power of two
        assert b < 4 * distinct or b == 64  # not more than needed
    assert ci.hash_buckets(0) == 64 and ci.hash_buckets(33) == 128


@pytest.mark.parametrize("delays, window", [
    ([10.0] * 99 + [10_000.0], 60),       # the 1% tail does not stretch the window
    ([100.0] * 50 + [250.0] * 50, 300),
    ([3 * 3600.0] * 10, 6 * 3600),
    ([30 * 86400.0], 604800),             # beyond every standard window: the largest
    ([], 3600),                           # nothing observed: one hour
])
def test_label_window_covers_99_percent_of_delays(delays, window):
    assert ci.label_window_s(delays) == window


def test_skewed_non_negative_numbers_get_log_transform(tmp_path):
    events = [_imp(i, {"price": 1.0 + (i % 5) if i else 500.0, "temp": -5.5 + i})
              for i in range(30)] + [_fb("click", 0)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    assert config.feature("price").transform == "log"   # max 500 > 10 x median 3
    assert config.feature("temp").transform == "zscore"  # negative values


def test_window_is_inferred_from_observed_delays(tmp_path):
    events = [_imp(i, {"a": "x"}) for i in range(10)]
    # Clicks 30 s after their impression (10:00:0i -> 10:00:3i).
    events += [dict(_fb("click", i), ts=f"2024-03-01T10:00:{30 + i:02d}Z") for i in range(10)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    assert config.tasks[0].label_window_s == 60


# --- default slices -----------------------------------------------------------

def test_low_cardinality_categorical_features_are_the_default_slices(inferred):
    # country: 3 strings. hour (12 ints) has too many values; user_id and
    # item_id are ids; tags and cats are lists.
    assert inferred.validation.slices == [["country"]]


def test_slices_gate_blessing_only_with_enough_positives_of_the_rarest_task(inferred):
    # add-to-cart: 1 event in 40 impressions, so 100 positives need 4,000
    # eval examples per slice: this small sample's slices are reported only.
    assert inferred.validation.min_slice_size == 4000


def test_default_slices_take_the_fewest_values_first(tmp_path):
    events = [_imp(i, {"device": ["m", "d"][i % 2], "segment": f"s{i % 4}",
                       "country": f"c{i % 8}", "city": f"t{i % 9}", "constant": "x"})
              for i in range(36)]
    events += [_fb("click", i) for i in range(36)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    assert config.validation.slices == [["device"], ["segment"], ["country"]]
    # Every impression clicked: the smallest size a slice is gated at.
    assert config.validation.min_slice_size == config_lib.ValidationConfig().min_slice_size


def test_no_low_cardinality_feature_means_no_slices(tmp_path):
    events = [_imp(i, {"price": float(i)}) for i in range(10)] + [_fb("click", 0)]
    config = ci.infer_config(_write(tmp_path / "l.gz", events))
    assert config.validation == config_lib.ValidationConfig()


def _funnel_logs(tmp_path, feedback_on):
    """Logs of 8 x FUNNEL_MIN_IMPRESSIONS impressions; `feedback_on` maps a
    feedback type to the impression indices it occurs on."""
    n = 8 * ci.FUNNEL_MIN_IMPRESSIONS
    events = [_imp(i, {"device": ["m", "d"][i % 2]}) for i in range(n)]
    events += [_fb(type_, i) for type_, indices in feedback_on.items() for i in indices
               if i < n]
    return _write(tmp_path / "l.gz", events)


def _depends_on(config):
    return {t.name: t.depends_on for t in config.tasks}


EVERY_2ND, EVERY_8TH = range(0, 10_000, 2), range(0, 10_000, 8)


def test_feedback_only_on_clicked_impressions_is_a_funnel_on_click(tmp_path):
    config = ci.infer_config(_funnel_logs(tmp_path, {"click": EVERY_2ND,
                                                     "purchase": EVERY_8TH}))
    assert _depends_on(config) == {"click": None, "purchase": "click"}
    assert config.output_names == ["click", "purchase", "purchase_given_click"]


def test_feedback_independent_of_click_is_not_a_funnel(tmp_path):
    # Every 3rd impression: half of them clicked.
    config = ci.infer_config(_funnel_logs(tmp_path, {"click": EVERY_2ND,
                                                     "share": range(0, 10_000, 3)}))
    assert _depends_on(config) == {"click": None, "share": None}


@pytest.mark.parametrize("funnel", [True, False])
def test_a_few_stray_events_are_tolerated_and_no_more(tmp_path, funnel):
    tolerated = round((1 - ci.FUNNEL_MIN_SHARE) * ci.FUNNEL_MIN_IMPRESSIONS)
    strays = tolerated if funnel else tolerated + 1
    # FUNNEL_MIN_IMPRESSIONS purchases, `strays` of them on unclicked impressions.
    on_clicks = range(0, 8 * (ci.FUNNEL_MIN_IMPRESSIONS - strays), 8)
    on_others = range(1, 8 * strays, 8)
    config = ci.infer_config(_funnel_logs(tmp_path, {
        "click": EVERY_2ND, "purchase": list(on_clicks) + list(on_others)}))
    assert _depends_on(config)["purchase"] == ("click" if funnel else None)


@pytest.mark.parametrize("purchases", [ci.FUNNEL_MIN_IMPRESSIONS, ci.FUNNEL_MIN_IMPRESSIONS - 1])
def test_a_funnel_needs_enough_impressions_to_judge(tmp_path, purchases):
    config = ci.infer_config(_funnel_logs(tmp_path, {"click": EVERY_2ND,
                                                     "purchase": EVERY_8TH[:purchases]}))
    enough = purchases >= ci.FUNNEL_MIN_IMPRESSIONS
    assert _depends_on(config)["purchase"] == ("click" if enough else None)


def test_the_tightest_covering_parent_is_chosen_and_funnels_chain(tmp_path):
    # Every purchase is carted and clicked, every cart clicked; "view" is
    # on every impression, so it covers them all too.
    config = ci.infer_config(_funnel_logs(tmp_path, {
        "view": range(10_000), "click": EVERY_2ND, "cart": range(0, 10_000, 4),
        "purchase": EVERY_8TH}))
    assert _depends_on(config) == {"view": None, "click": "view", "cart": "click",
                                   "purchase": "cart"}
    assert config.output_names[-3:] == ["click_given_view", "cart_given_click",
                                        "purchase_given_cart"]


def test_feedback_types_on_the_same_impressions_do_not_depend_on_each_other(tmp_path):
    # Neither is rarer: either parent would make a cycle.
    config = ci.infer_config(_funnel_logs(tmp_path, {"like": EVERY_8TH,
                                                     "share": EVERY_8TH}))
    assert _depends_on(config) == {"like": None, "share": None}


def test_each_inferred_funnel_is_explained_with_its_share(tmp_path, caplog):
    purchases = list(EVERY_8TH[:ci.FUNNEL_MIN_IMPRESSIONS - 1]) + [1]  # one not clicked
    logs = _funnel_logs(tmp_path, {"click": EVERY_2ND, "purchase": purchases,
                                   "add-to-cart": range(0, 10_000, 3)})
    explained = []
    ci.infer_config(logs, explain=explained.append)
    assert explained == [
        f"purchase depends_on click: 99.0% of the {ci.FUNNEL_MIN_IMPRESSIONS:,} impressions "
        "with purchase had click too; served: purchase = click x purchase_given_click (ESMM)"]
    # By default, the explanation is logged.
    with caplog.at_level(logging.INFO):
        ci.infer_config(logs)
    assert explained[0] in caplog.messages
