"""Wording: counts agree with their nouns."""

from hos_keras.text import plural


def test_plural():
    assert plural(1, "epoch") == "1 epoch"
    assert plural(2, "epoch") == "2 epochs"
    assert plural(0, "channel group") == "0 channel groups"
    assert plural(1, "batch", "batches") == "1 batch"
    assert plural(12000, "batch", "batches") == "12,000 batches"
