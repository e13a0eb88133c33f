"""Repeat rates: adjacent duplicate tokens and words in outputs (lanmt_cli.metrics)."""

from __future__ import annotations

from lanmt_cli.metrics import repeat_rate, repeats_of, word_repeat_rate


def test_repeat_rate_counts_tokens_equal_to_the_one_before():
    assert repeat_rate([[5, 5, 5, 7], [8, 9]]) == 2 / 6  # a run of three is two repeats
    assert repeat_rate([[4, 7, 4]]) == 0.0  # only neighbours count
    assert repeat_rate([[], [3]]) == 0.0 and repeat_rate([]) == 0.0


def test_word_repeat_rate_is_case_folded_over_whitespace_words():
    texts = ["Zwei Kinder spielen mit mit einem Ball.", "Der der Hund läuft."]
    assert word_repeat_rate(texts) == 2 / 11
    # a different word is no repeat, however close ("in im"); punctuation stays on its word
    assert word_repeat_rate(["Ein Ball in im Park.", "Park Park."]) == 0.0


def test_metric_names_follow_the_decoders():
    assert repeats_of("one-shot") == "repeat_rate"
    assert repeats_of("refine1") == "repeat_rate_refine1"
    assert repeats_of("refine1", words=True) == "word_repeat_rate_refine1"
