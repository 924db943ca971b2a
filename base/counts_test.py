"""The ingestion counts, as the run summary reads them back."""
from mtrank.base import counts
from mtrank.base import log_contract as lc


def test_splits_and_dead_letters_read_back_from_the_counts():
    # As LogExampleGen records them (the names are run_summary.json's keys).
    ingest_counts = {
        "lines_read": 9, "impressions": 3, "feedback_merged": 2,
        "examples.train": 2, "examples.eval": 1,
        "dead_letter.not_json": 3, "dead_letter.orphan_feedback": 1,
        # Lines the following span counts; not this span's dead letters.
        "lookahead.dead_letter.not_json": 5,
    }
    assert counts.examples_per_split(ingest_counts) == {"eval": 1, "train": 2}
    assert counts.dead_letters_per_reason(ingest_counts) == {
        lc.NOT_JSON: 3, lc.ORPHAN_FEEDBACK: 1}
    assert counts.LOOKAHEAD_PREFIX + counts.dead_letter_outcome(lc.NOT_JSON) in ingest_counts
    assert counts.split_count_key("eval") in ingest_counts
