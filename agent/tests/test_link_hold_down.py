"""Own-link tracking: the hold-down of links that come back, and its config keys."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_config import GOOD

from availability_manager.daemon.config import ConfigError, parse_config
from availability_manager.daemon.link_hold_down import LinkHoldDown


def hold_down(base: float = 2.0, top: float = 60.0) -> LinkHoldDown:
    return LinkHoldDown(["out0", "in0", "sync0"], base, top)


def test_a_link_down_is_a_fault_at_once_and_up_only_after_the_hold_down() -> None:
    h = hold_down()
    h.update([], 0.0)
    assert h.fault(0.0) is None and h.next_deadline(0.0) is None
    h.update(["out0"], 10.0)
    assert h.fault(10.0) == "interfaces down: out0"
    assert h.next_deadline(10.0) is None  # down: only a new input can change it
    h.update([], 11.0)
    assert h.faulty(11.0) == ([], ["out0"])
    assert h.fault(11.0) == "held down after coming back: out0 for 2 s"
    assert h.next_deadline(11.0) == 13.0
    assert h.faulty(12.999) == ([], ["out0"])
    assert h.fault(13.0) is None and h.next_deadline(13.0) is None


def test_links_up_at_start_are_not_held() -> None:
    h = hold_down()
    h.update([], 0.0)
    assert h.fault(0.0) is None


def test_a_flapping_link_is_held_longer_each_time_up_to_the_maximum() -> None:
    h = hold_down(base=2.0, top=10.0)
    now = 0.0
    holds = []
    for _ in range(5):  # down 0.1 s, up 0.3 s: far quicker than the hold-down
        h.update(["in0"], now)
        h.update([], now + 0.1)
        holds.append(h.hold_s("in0"))
        now += 0.4
    assert holds == [2.0, 4.0, 8.0, 10.0, 10.0]
    # while it flaps it never counts as up: the buckets moved away once
    assert h.faulty(now) == ([], ["in0"])
    assert h.next_deadline(now) == pytest.approx(now - 0.3 + 10.0)


def test_a_link_that_failed_once_after_long_stability_gets_the_base_hold_down() -> None:
    h = hold_down(base=2.0, top=10.0)
    h.update(["in0"], 0.0)
    h.update([], 0.5)
    h.update(["in0"], 1.0)  # flap: hold doubles
    h.update([], 1.5)
    assert h.hold_s("in0") == 4.0
    h.update(["in0"], 1.5 + 9.0)  # up 9 s: stable for its hold, not for the maximum
    h.update([], 11.0)
    assert h.hold_s("in0") == 4.0
    h.update(["in0"], 11.0 + 10.0)  # up for the maximum: earlier flaps forgiven
    h.update([], 22.0)
    assert h.hold_s("in0") == 2.0


def test_a_reload_bounds_the_current_hold_downs() -> None:
    h = hold_down(base=2.0, top=60.0)
    for t in (0.0, 1.0, 2.0, 3.0):
        h.update(["out0"], t)
        h.update([], t + 0.5)
    assert h.hold_s("out0") == 16.0
    h.configure(1.0, 4.0)
    assert h.hold_s("out0") == 4.0  # doubled 3 times, capped
    assert h.hold_s("in0") == 1.0  # never flapped: the new base
    with pytest.raises(ValueError, match="hold-down"):
        h.configure(5.0, 4.0)


def test_zero_hold_down_rejoins_at_once() -> None:
    h = hold_down(base=0.0, top=0.0)
    h.update(["out0"], 1.0)
    h.update([], 1.2)
    assert h.fault(1.2) is None


@given(
    st.lists(
        st.tuples(st.floats(0.0, 5.0), st.frozensets(st.sampled_from(["out0", "in0", "sync0"]))),
        max_size=30,
    )
)
def test_down_links_always_fault_and_release_is_never_early(
    steps: list[tuple[float, frozenset[str]]],
) -> None:
    """Reference: an interface counts as up only if it is up now and has been
    up without a break for at least the base hold-down since it was last down."""
    h = hold_down(base=1.0, top=8.0)
    now = 0.0
    last_down: dict[str, float] = {}
    for gap, down in steps:
        now += gap
        h.update(down, now)
        for name in down:
            last_down[name] = now
        bad_down, held = h.faulty(now)
        assert set(bad_down) == set(down)
        for name in ("out0", "in0", "sync0"):
            if name not in down and name in last_down and now - last_down[name] < 1.0:
                assert name in held
        deadline = h.next_deadline(now)
        assert (deadline is None) == (not held)
        if deadline is not None:
            assert deadline > now


def parse(data: object) -> object:
    return parse_config(data, Path("/etc/am.yml"))


def with_links(links: object) -> dict[str, object]:
    data = copy.deepcopy(GOOD)
    data["links"] = links
    return data


def test_links_config_defaults_and_values() -> None:
    cfg = parse_config(GOOD, Path("/etc/am.yml"))
    assert (cfg.links.hold_down_ms, cfg.links.hold_down_max_ms) == (2000, 60000)
    cfg = parse_config(with_links({"hold_down_ms": 500}), Path("/etc/am.yml"))
    assert (cfg.links.hold_down_ms, cfg.links.hold_down_max_ms) == (500, 60000)
    cfg = parse_config(with_links({"hold_down_ms": 90000}), Path("/etc/am.yml"))
    assert cfg.links.hold_down_max_ms == 90000  # the maximum follows a longer base


@pytest.mark.parametrize(
    ("links", "names"),
    [
        ({"hold_down_ms": -1}, "links.hold_down_ms: expected an integer from 0"),
        ({"hold_down_ms": "2s"}, "links.hold_down_ms: expected an integer"),
        ({"hold_down_ms": 3000, "hold_down_max_ms": 1000}, "links.hold_down_max_ms: expected at"),
        ({"hold_down": 3000}, "links.hold_down: unknown key"),
        ([], "links: expected a mapping"),
    ],
)
def test_links_config_mistakes_name_their_key(links: object, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(with_links(links))
    assert names in str(err.value)
