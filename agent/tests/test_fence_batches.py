"""The fence's kept refresh batches equal the batch built from scratch."""

from __future__ import annotations

import pytest

from availability_manager.dataplane.fence import RefreshBatches, refresh_batch


@pytest.mark.parametrize("timeout_ms", [1, 87, 125, 60_000])
@pytest.mark.parametrize("seq", [1, 5, 1_000_003, 0x7FFFFFFF])
def test_a_kept_batch_is_the_batch_built_afresh(timeout_ms: int, seq: int) -> None:
    batches = RefreshBatches("fwcluster")
    batches(timeout_ms, 77)  # kept with another sequence number first
    assert batches(timeout_ms, seq) == refresh_batch("fwcluster", timeout_ms, seq)


def test_every_timeout_gets_its_own_batch_and_the_kept_ones_are_bounded() -> None:
    batches = RefreshBatches("fwcluster")
    for timeout_ms in range(1, 3 * RefreshBatches.MAX_KEPT):
        assert batches(timeout_ms, 9) == refresh_batch("fwcluster", timeout_ms, 9)
        assert len(batches._kept) <= RefreshBatches.MAX_KEPT
