"""Infers a starting config from logs, for `mtrank init-config` and for
`mtrank run` without `--config`.

Every impression feature becomes an input (strings -> categorical, numbers ->
numeric, lists -> multivalent), `user_id` and `item_id` become hashed
categorical ids, and every feedback type seen becomes one binary task; a
feedback type seen (almost) only on impressions that also have a more common
one becomes an ESMM funnel task on it (`depends_on`), and inference says so.
The few categorical features with the fewest values become the Evaluator's
slices (docs/validation.md#slices-of-an-inferred-config).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Callable, Dict, Iterable, List, Optional, Set

from mtrank.base import log_contract, log_files
from mtrank.components import spans
from mtrank.base import config as config_lib

# The architecture of inferred configs: shared bottom. With the cross layers
# and the inferred funnels it ranks as well as PLE (which led without them)
# and trains 2.6-3.6x faster: benchmarks/simulator.py, means over 200k
# impressions (seeds 0 and 1) and 2M (seed 0): click AUC 0.6306 against
# PLE's 0.6310, purchase 0.7302 against 0.7219 (docs/benchmarks.md). On
# the demo's 50k impressions PLE led (click 0.5907 against 0.5821, purchase
# 0.6287 against 0.6109): the two are level within the noise of one run.
INFERRED_ARCHITECTURE = "shared_bottom"
# Two DCN-v2 cross layers before the experts: on those simulated logs, PLE's
# eval AUC rose on every task with both seeds measured (means of seeds 0
# and 1: click 0.6348 -> 0.6394, dwell 0.6346 -> 0.6385, like 0.6039 ->
# 0.6089, purchase 0.7425 -> 0.7583), as income did on census
# (docs/benchmarks.md).
INFERRED_CROSS_LAYERS = 2
# LazyAdam (trainer/lazy_adam.py): Keras' Adam rewrites every row of the
# user and item tables on every step. On 2M simulated impressions the
# Trainer's training took 97 s instead of 340 s, with the same eval AUCs
# (click 0.6416 against 0.6411, purchase 0.7398 against 0.7395;
# docs/benchmarks.md).
INFERRED_LAZY_ADAM = True
# A moving average of the weights (trainer/weight_averaging.py), evaluated,
# kept by early stopping and exported. On simulated logs it raised purchase
# AUC in all six runs measured (200k, two logs x two training seeds: mean
# +0.0038; 2M, two training seeds: +0.0078, +0.0048) and click at 2M
# (+0.0034 in both), leaving click at 200k level (mean -0.0005);
# docs/benchmarks.md.
INFERRED_EMA_MOMENTUM = 0.999
# A position-bias tower (model.position_tasks) on every task that is not a
# funnel's child (those take their parent's position-aware probability),
# when at least this share of impressions give a position. On simulated
# logs it gained on every task in all three runs measured (200k seeds 0 and
# 1, 2M seed 0; click +0.0008, +0.0067, +0.0009; purchase +0.0044, +0.0004,
# +0.0042; docs/benchmarks.md); served scores stay position-free.
POSITION_TOWER_MIN_SHARE = 0.5

# A string feature with at most this many distinct values gets a vocabulary
# (an exact id per value); above it, hashing (no vocabulary pass, bounded size).
VOCABULARY_MAX_DISTINCT = 1000
# Inference reads whole files until it has read at least this many lines:
# enough to see every feature and feedback type, cheap on logs of any size.
# Whole files, because a log file's lines need not be in time order (the
# simulator's are shuffled within a day, as logs merged from several
# writers are): in the first 200,000 lines of 2M simulated impressions, 3%
# of the purchases had their click event further down the second file, so
# the purchase -> click funnel (FUNNEL_MIN_SHARE) went unseen.
DEFAULT_SAMPLE_LINES = 200_000
# ... but never more than this many times the sample from one file that
# alone exceeds it (all the logs in one file): a prefix of it, then.
MAX_SAMPLE_FACTOR = 10
MAX_TRACKED_DISTINCT = 1_000_000
# An integer feature with at most this many values is an id (hour of day, day
# of week, a small enum): embedded per value, since its effect need not be
# monotone.
INTEGER_ID_MAX_DISTINCT = 32
# A non-negative number whose largest value is this many times its median
# (prices, counts, durations) is log-transformed before the z-score.
LOG_SKEW_RATIO = 10.0
# Label windows are rounded up to one of these (seconds): a window a person
# can read and reason about.
STANDARD_WINDOWS_S = (60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 172800, 604800)
# The window covers this quantile of the observed feedback delays.
WINDOW_QUANTILE = 0.99
# Default slices: up to this many single-valued categorical features (other
# than the user and item ids) with 2 to SLICE_MAX_DISTINCT values, the fewest
# values first: device types, countries, segments, whose slices a reader can
# scan in one table.
DEFAULT_SLICES = 3
SLICE_MAX_DISTINCT = 8
# A slice decides blessing only once it holds about this many positives of
# the rarest task: AUC's standard error is then about 0.03 at AUC 0.6
# (Hanley & McNeil 1982), so a slice does not fail `min_auc` by chance. The
# inferred `min_slice_size` is this many over the rarest feedback's rate:
# small runs report their slices without gating on them.
SLICE_MIN_POSITIVES = 100
# Feedback B becomes a funnel task on feedback A (`depends_on: A`) when at
# least this share of the impressions labelled B are labelled A too. Not 1:
# a few events joined to the wrong impression, or a parent arriving after
# its window, must not hide a funnel; an independent B shows a share near
# A's rate, far below this unless A is on almost every impression.
FUNNEL_MIN_SHARE = 0.98
# ... and only once at least this many impressions are labelled B: the
# share's binomial standard error at 98% is then 1.4 points, and two stray
# events are tolerated (with 49 or fewer, a single one fails the threshold).
FUNNEL_MIN_IMPRESSIONS = 100


def embedding_dim(cardinality: int) -> int:
    """About 6 * cardinality^(1/4) (the usual rule of thumb), within [4, 32]."""
    return int(min(32, max(4, round(6 * cardinality ** 0.25))))


def hash_buckets(distinct: int) -> int:
    """Twice the distinct values seen (room for growth, few collisions), as a
    power of two, at least 64."""
    return max(64, 2 ** math.ceil(math.log2(max(2 * distinct, 1))))


class _FeatureStats:
    def __init__(self):
        self.kinds = collections.Counter()  # string / int / float / list
        self.list_element_kinds = collections.Counter()
        self.distinct = set()
        self.max_list_len = 0
        self.numbers = []  # scalar numeric values, for the skew of numeric features

    def add(self, value) -> None:
        if value is None:
            return
        if isinstance(value, list):
            self.kinds["list"] += 1
            self.max_list_len = max(self.max_list_len, len(value))
            for element in value:
                self.list_element_kinds[_scalar_kind(element)] += 1
                self._add_distinct(element)
        else:
            self.kinds[_scalar_kind(value)] += 1
            self._add_distinct(value)
            if not isinstance(value, str):
                self.numbers.append(value)

    def _add_distinct(self, value) -> None:
        # Past this, cardinality only sizes hash buckets: a floor is enough.
        if len(self.distinct) < MAX_TRACKED_DISTINCT:
            self.distinct.add(value)


def _scalar_kind(value) -> str:
    if isinstance(value, str):
        return "string"
    return "int" if isinstance(value, int) else "float"


def _numeric_dtype(kinds: collections.Counter) -> str:
    return "float" if kinds["float"] else "int64"


def _categorical(name: str, dtype: str, distinct: int, kind: str = "categorical",
                 max_len: int = 8) -> config_lib.FeatureConfig:
    if distinct <= VOCABULARY_MAX_DISTINCT:
        encoding = dict(encoding="vocabulary", vocab_size=max(distinct, 1))
    else:
        encoding = dict(encoding="hashing", hash_buckets=hash_buckets(distinct))
    return config_lib.FeatureConfig(
        name=name, kind=kind, dtype=dtype, embedding_dim=embedding_dim(distinct),
        max_len=max_len, **encoding)


def _feature_config(name: str, stats: _FeatureStats) -> Optional[config_lib.FeatureConfig]:
    """The feature's config, or None when it cannot be used: always null, or
    a list of fractional numbers, which is not a set of ids (the only kind of
    list the model embeds)."""
    distinct = len(stats.distinct)
    if not stats.kinds:
        logging.warning("feature %r is null in every impression read: left out", name)
        return None
    if stats.kinds["list"] >= sum(stats.kinds.values()) / 2:
        element_kinds = stats.list_element_kinds
        if element_kinds["float"]:
            logging.warning("feature %r is a list of fractional numbers: left out of the "
                            "inferred config", name)
            return None
        dtype = "string" if element_kinds["string"] or not element_kinds else "int64"
        return _categorical(name, dtype, distinct, kind="multivalent",
                            max_len=max(1, min(stats.max_list_len, 32)))
    if stats.kinds["string"] >= sum(stats.kinds.values()) / 2:
        return _categorical(name, "string", distinct)
    dtype = _numeric_dtype(stats.kinds)
    if dtype == "int64" and distinct <= INTEGER_ID_MAX_DISTINCT:
        return _categorical(name, "int64", distinct)
    numbers = sorted(stats.numbers)
    median = numbers[len(numbers) // 2]
    skewed = numbers[0] >= 0 and numbers[-1] > LOG_SKEW_RATIO * max(median, 1e-9)
    return config_lib.FeatureConfig(
        name=name, kind="numeric", dtype=dtype, transform="log" if skewed else "zscore")


@dataclasses.dataclass(frozen=True)
class Funnel:
    """Feedback `child` is seen (almost) only where `parent` is: the child's
    task gets `depends_on` the parent's."""
    child: str
    parent: str
    child_impressions: int
    """Impressions labelled `child`."""
    with_parent: int
    """Of them, those labelled `parent` too."""

    @property
    def share(self) -> float:
        return self.with_parent / self.child_impressions

    def explanation(self) -> str:
        child, parent = _task_name(self.child), _task_name(self.parent)
        return (f"{child} depends_on {parent}: {self.share:.1%} of the "
                f"{self.child_impressions:,} impressions with {self.child} had {self.parent} "
                f"too; served: {child} = {parent} x {child}_given_{parent} (ESMM)")


def infer_funnels(labelled: Dict[str, Set[tuple]]) -> Dict[str, Funnel]:
    """The funnel of each feedback type that sits in one, by child, from the
    impressions (keys) each type labels. A parent labels more impressions
    than its child, so parents never form a cycle; of several parents
    covering a child, the one labelling the fewest impressions: the tightest
    funnel (purchase after add-to-cart rather than after click)."""
    funnels = {}
    for child, child_keys in labelled.items():
        if len(child_keys) < FUNNEL_MIN_IMPRESSIONS:
            continue
        covering = [
            Funnel(child, parent, len(child_keys), len(child_keys & parent_keys))
            for parent, parent_keys in sorted(labelled.items())
            if len(parent_keys) > len(child_keys)]
        covering = [f for f in covering if f.share >= FUNNEL_MIN_SHARE]
        if covering:
            funnels[child] = min(covering, key=lambda f: len(labelled[f.parent]))
    return funnels


def label_window_s(delays_s: List[float]) -> int:
    """The smallest standard window covering WINDOW_QUANTILE of the delays."""
    if not delays_s:
        return 3600
    delays_s = sorted(delays_s)
    covered = delays_s[max(0, math.ceil(WINDOW_QUANTILE * len(delays_s)) - 1)]
    return next((w for w in STANDARD_WINDOWS_S if w >= covered), STANDARD_WINDOWS_S[-1])


def infer_config_from_events(events: Iterable[log_contract.Event], model_name: str = "mtrank",
                             explain: Callable[[str], None] = logging.info) -> config_lib.Config:
    """Builds a config from valid events (dead letters are not looked at);
    `explain` gets one line per inferred funnel."""
    feature_stats: Dict[str, _FeatureStats] = collections.defaultdict(_FeatureStats)
    ids = {config_lib.USER_ID: set(), config_lib.ITEM_ID: set()}
    feedback_types = collections.Counter()
    impression_ts: Dict[tuple, int] = {}
    feedback_ts = []
    impressions = positioned = 0
    for event in events:
        if not event.is_impression:
            feedback_types[event.type] += 1
            feedback_ts.append((event.type, event.key, event.ts))
            continue
        impressions += 1
        positioned += event.position is not None
        impression_ts[event.key] = event.ts
        ids[config_lib.USER_ID].add(event.user_id)
        ids[config_lib.ITEM_ID].add(event.item_id)
        for name, value in event.features.items():
            feature_stats[name].add(value)
    if not impressions:
        raise config_lib.ConfigError("no valid impression in the logs: cannot infer features")
    if not feedback_types:
        raise config_lib.ConfigError("no feedback events in the logs: cannot infer tasks")

    features = [
        config_lib.FeatureConfig(
            name=name, kind="categorical", dtype="string", encoding="hashing",
            hash_buckets=hash_buckets(len(values)), embedding_dim=embedding_dim(len(values)))
        for name, values in ids.items()
    ]
    for name in sorted(feature_stats):
        if name in config_lib.RESERVED_NAMES or name in ids:
            continue
        feature = _feature_config(name, feature_stats[name])
        if feature is not None:
            features.append(feature)
    delays = collections.defaultdict(list)
    for feedback, key, ts in feedback_ts:
        if key in impression_ts and ts >= impression_ts[key]:
            delays[feedback].append((ts - impression_ts[key]) / 1e6)
    windows = {feedback: label_window_s(delays[feedback]) for feedback in feedback_types}
    # The impressions each feedback type labels, as LogExampleGen will
    # (within the task's window): the funnels are the labels' funnels.
    labelled = {feedback: set() for feedback in feedback_types}
    for feedback, key, ts in feedback_ts:
        if key in impression_ts and 0 <= (ts - impression_ts[key]) / 1e6 <= windows[feedback]:
            labelled[feedback].add(key)
    funnels = infer_funnels(labelled)
    tasks = [
        config_lib.TaskConfig(
            name=_task_name(feedback), feedback=feedback, label_window_s=windows[feedback],
            depends_on=_task_name(funnels[feedback].parent) if feedback in funnels else None)
        for feedback, _ in feedback_types.most_common()
    ]
    for feedback in sorted(funnels):
        explain(funnels[feedback].explanation())
    position_tasks = ([t.name for t in tasks if t.depends_on is None]
                      if positioned >= POSITION_TOWER_MIN_SHARE * impressions else [])
    # Round-trip through validation so an inferred config obeys every rule a
    # hand-written one does.
    return config_lib.config_from_dict(config_lib.Config(
        model_name=model_name, features=features, tasks=tasks,
        model=config_lib.ModelConfig(architecture=INFERRED_ARCHITECTURE,
                                     cross_layers=INFERRED_CROSS_LAYERS,
                                     position_tasks=position_tasks),
        training=config_lib.TrainingConfig(lazy_adam=INFERRED_LAZY_ADAM,
                                           ema_momentum=INFERRED_EMA_MOMENTUM),
        validation=default_validation(features, feature_stats, impressions,
                                      min(feedback_types.values()))).to_dict())


def default_validation(features: List[config_lib.FeatureConfig],
                       feature_stats: Dict[str, _FeatureStats], impressions: int,
                       rarest_feedback: int) -> config_lib.ValidationConfig:
    """Slices by the low-cardinality categorical features, gated once a
    slice holds about SLICE_MIN_POSITIVES of the rarest task (`rarest_feedback`
    events among `impressions`)."""
    ids = (config_lib.USER_ID, config_lib.ITEM_ID)
    candidates = sorted(
        (len(feature_stats[f.name].distinct), f.name) for f in features
        if f.kind == "categorical" and f.name not in ids and f.name in feature_stats
        and 2 <= len(feature_stats[f.name].distinct) <= SLICE_MAX_DISTINCT)
    slices = [[name] for _, name in candidates[:DEFAULT_SLICES]]
    if not slices:
        return config_lib.ValidationConfig()
    default_size = config_lib.ValidationConfig().min_slice_size
    # Impressions holding SLICE_MIN_POSITIVES at the rarest feedback's rate
    # (at most 1), rounded up to hundreds: a size a reader takes for a choice.
    rarest = min(rarest_feedback, impressions)
    needed = math.ceil(SLICE_MIN_POSITIVES * impressions / (100 * rarest)) * 100
    return config_lib.ValidationConfig(slices=slices,
                                       min_slice_size=max(default_size, needed))


def _task_name(feedback: str) -> str:
    name = "".join(c if c.isalnum() else "_" for c in feedback).strip("_") or "task"
    return name if name[0].isalpha() else f"t_{name}"


def infer_config(log_glob: str, model_name: str = "mtrank",
                 sample_lines: int = DEFAULT_SAMPLE_LINES,
                 explain: Callable[[str], None] = logging.info) -> config_lib.Config:
    """Reads the logs' files in order (every day's, for daily partitions)
    until at least `sample_lines` lines are read, finishing the file it is
    in (at most MAX_SAMPLE_FACTOR x `sample_lines` lines), and infers a
    config; `explain` gets one line per inferred funnel (`print` for a
    person at a terminal)."""
    log_glob = spans.any_span_glob(log_glob)

    def events():
        count, last_path = 0, None
        for path, record in log_files.iter_log_lines(log_glob):
            if count >= sample_lines and (path != last_path
                                          or count >= MAX_SAMPLE_FACTOR * sample_lines):
                return
            count, last_path = count + 1, path
            event = log_files.parse_record(record, path)
            if isinstance(event, log_contract.Event):
                yield event

    return infer_config_from_events(events(), model_name, explain)
