from availability_manager.daemon.kernel_guard import (
    HEALTHY_RESET_S,
    PROBE_BACKOFF_S,
    RETRY_DELAYS_S,
    KernelGuard,
)


def test_a_failure_steps_back_and_schedules_the_first_probe() -> None:
    guard = KernelGuard()
    fault = guard.failed("nftables programming", "No such file or directory", 10.0)
    assert fault == (
        f"nftables programming failed {1 + len(RETRY_DELAYS_S)} times: No such file or directory"
    )
    assert guard.fault == fault and guard.step_backs == 1
    denied = guard.failed("restoring", "Could not process rule: Operation not permitted", 11.0)
    assert denied.startswith("restoring failed 1 time: "), "a final refusal is tried once"
    assert not guard.probe_due(10.0 + PROBE_BACKOFF_S[0] - 0.01)
    assert guard.probe_due(10.0 + PROBE_BACKOFF_S[0])
    assert not guard.probe_due(10.0 + PROBE_BACKOFF_S[0])  # running: not twice


def test_a_successful_probe_clears_the_fault() -> None:
    guard = KernelGuard()
    guard.failed("conntrack injection", "ENOMEM", 0.0)
    assert guard.probe_due(PROBE_BACKOFF_S[0])
    assert guard.probe_result(None, PROBE_BACKOFF_S[0]) is None
    assert guard.fault is None
    assert not guard.probe_due(1000.0)  # nothing to probe while content


def test_failed_probes_back_off_up_to_the_last_step() -> None:
    guard = KernelGuard()
    now = 0.0
    guard.failed("nftables programming", "EPERM", now)
    waits = []
    for _ in range(len(PROBE_BACKOFF_S) + 2):
        wait = guard.next_probe_in(now)
        assert wait is not None
        waits.append(wait)
        now += wait
        assert guard.probe_due(now)
        assert guard.probe_result("EPERM", now) == "kernel still refuses: EPERM"
    assert waits == [*PROBE_BACKOFF_S, PROBE_BACKOFF_S[-1], PROBE_BACKOFF_S[-1]]
    assert guard.probes_failed == len(PROBE_BACKOFF_S) + 2


def test_failures_while_stepped_back_keep_the_probe_schedule() -> None:
    guard = KernelGuard()
    guard.failed("conntrack injection", "ENOMEM", 0.0)
    guard.failed("nftables programming", "EPERM", 0.5)  # the release fails too
    assert guard.step_backs == 1
    assert guard.fault is not None and "EPERM" in guard.fault
    assert guard.next_probe_in(0.5) == PROBE_BACKOFF_S[0] - 0.5


def test_a_node_that_fails_again_soon_waits_longer_then_forgets() -> None:
    guard = KernelGuard()
    guard.failed("conntrack injection", "ENOMEM", 0.0)
    assert guard.probe_due(1.0) and guard.probe_result(None, 1.0) is None
    guard.failed("conntrack injection", "ENOMEM", 5.0)  # soon after the rejoin
    assert guard.next_probe_in(5.0) == PROBE_BACKOFF_S[1]
    assert guard.probe_due(7.0) and guard.probe_result(None, 7.0) is None
    later = 5.0 + HEALTHY_RESET_S
    guard.failed("conntrack injection", "ENOMEM", later)  # long after: afresh
    assert guard.next_probe_in(later) == PROBE_BACKOFF_S[0]
    assert guard.step_backs == 3
