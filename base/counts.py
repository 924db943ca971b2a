"""The ingestion counts: the names every ExampleGen counts its input under,
and the run summary reads back.

Every line read ends as exactly one outcome, so the outcomes add up to
LINES_READ: an impression in an example, a feedback event merged into a
label, a late feedback event (after its task's window), a feedback event of
a type no task uses, a duplicate (the same event again), feedback that
labelled the previous day's impression (when ingesting one span), or a dead
letter with a reason (base/log_contract.py names the reasons). Besides the
outcomes, `examples.<split>` counts the examples of each split.
"""

# The custom property of the Examples (and DeadLetters) artifact holding the
# counts as a JSON object.
COUNTS_PROPERTY = "ingest_counts"

LINES_READ = "lines_read"

# Outcomes.
EXAMPLE = "impressions"
FEEDBACK_MERGED = "feedback_merged"
FEEDBACK_LATE = "feedback_late"
DUPLICATES = "duplicates"
FEEDBACK_UNUSED_TYPE = "feedback_unused_type"
FEEDBACK_PREVIOUS_SPAN = "feedback_previous_span"
DEAD_LETTER_PREFIX = "dead_letter."
# Prefixes the outcomes of lines that another span counts (a span's
# lookahead reads the following days' feedback; those days count the lines).
LOOKAHEAD_PREFIX = "lookahead."

_SPLIT_PREFIX = "examples."


def dead_letter_outcome(reason: str) -> str:
    return DEAD_LETTER_PREFIX + reason


def split_count_key(split: str) -> str:
    """The key of the number of examples in a split."""
    return _SPLIT_PREFIX + split


def examples_per_split(counts: dict) -> dict:
    """{split: examples} from the counts."""
    return {key[len(_SPLIT_PREFIX):]: n for key, n in sorted(counts.items())
            if key.startswith(_SPLIT_PREFIX)}


def dead_letters_per_reason(counts: dict) -> dict:
    """{reason: dead letters} from the counts (not the lookahead's)."""
    return {key[len(DEAD_LETTER_PREFIX):]: n for key, n in counts.items()
            if key.startswith(DEAD_LETTER_PREFIX)}
