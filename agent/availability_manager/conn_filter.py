"""Which connections an operator's listing shows (`clusterctl cache`, `kernel`).

Owns the filter's vocabulary, its validation and the test of one entry; pure
(no I/O), so the agent and clusterctl share it and the tests drive it alone.
Within one field the values are alternatives (any may match); across fields
all must match, as conntrack(8)'s own filters combine.

A request carries the filter as plain JSON (`to_request`/`from_request`):
addresses as CIDR strings, ports and buckets as "N" or "N-M", protocols and
TCP states by name. Everything is checked on the way in and a bad value is
refused with `FilterError` naming the field and what it expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from .connection import (
    IPS_ASSURED,
    IPS_DST_NAT,
    IPS_EXPECTED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    PROTO_NAMES,
    PROTO_TCP,
    Connection,
)

TCP_STATES = (
    "none",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
    "syn_sent2",
)  # fmt: skip  (enum tcp_conntrack, in kernel order: the index is the state)
STATUS_NAMES = {
    IPS_EXPECTED: "expected",
    IPS_SEEN_REPLY: "seen_reply",
    IPS_ASSURED: "assured",
    IPS_SRC_NAT: "src_nat",
    IPS_DST_NAT: "dst_nat",
}
PROTO_BY_NUMBER = {n: name for name, n in PROTO_NAMES.items()}
FIELDS = ("src", "dst", "addr", "port", "sport", "dport", "proto", "state", "bucket", "owner")
MAX_VALUES = 64  # per field: a request stays far below the control socket's size limit


class FilterError(ValueError):
    """A filter value a person typed wrong; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Net:
    """A CIDR as (length, network int, mask): tested against packed addresses
    without building an ipaddress object per entry."""

    size: int
    net: int
    mask: int

    def __contains__(self, packed: bytes) -> bool:
        return len(packed) == self.size and int.from_bytes(packed) & self.mask == self.net


def _nets(values: Iterable[str], field: str) -> tuple[_Net, ...]:
    out = []
    for v in values:
        try:
            n = ipaddress.ip_network(str(v), strict=False)
        except ValueError:
            raise FilterError(f"{field}: expected an address or CIDR, got {v!r}") from None
        out.append(_Net(n.max_prefixlen // 8, int(n.network_address), int(n.netmask)))
    return tuple(out)


def _ranges(values: Iterable[object], field: str, hi: int) -> tuple[tuple[int, int], ...]:
    out = []
    for v in values:
        text = str(v)
        lo_s, _, hi_s = text.partition("-")
        try:
            lo, top = int(lo_s), int(hi_s) if hi_s else int(lo_s)
        except ValueError:
            raise FilterError(f"{field}: expected N or N-M, got {text!r}") from None
        if not 0 <= lo <= top <= hi:
            raise FilterError(f"{field}: {text!r} is outside 0..{hi} (or its range is reversed)")
        out.append((lo, top))
    return tuple(out)


def _in(value: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


@dataclasses.dataclass(frozen=True, slots=True)
class ConnFilter:
    """Empty fields match everything; `ConnFilter()` lists the whole table."""

    src: tuple[_Net, ...] = ()
    dst: tuple[_Net, ...] = ()
    addr: tuple[_Net, ...] = ()  # any address of either tuple (NAT: both sides)
    port: tuple[tuple[int, int], ...] = ()  # source or destination port
    sport: tuple[tuple[int, int], ...] = ()
    dport: tuple[tuple[int, int], ...] = ()
    proto: frozenset[int] = frozenset()
    state: frozenset[int] = frozenset()  # TCP states; other protocols never match
    bucket: tuple[tuple[int, int], ...] = ()
    owner: frozenset[str] = frozenset()  # node ids; "none" for a bucket nobody owns
    request: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def from_request(cls, raw: object, buckets: int = 0x10000) -> ConnFilter:
        """The filter from a request's `filter` object ({field: [values]})."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise FilterError("filter: expected an object of field: [values]")
        unknown = sorted(set(raw) - set(FIELDS))
        if unknown:
            raise FilterError(f"filter: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
        vals: dict[str, tuple[str, ...]] = {}
        for field, v in raw.items():
            items = v if isinstance(v, list) else [v]
            if not items or len(items) > MAX_VALUES:
                raise FilterError(f"{field}: expected 1 to {MAX_VALUES} values")
            if not all(isinstance(i, str | int) and not isinstance(i, bool) for i in items):
                raise FilterError(f"{field}: values must be strings or integers")
            vals[field] = tuple(str(i) for i in items)
        protos = set()
        for p in vals.get("proto", ()):
            if p.lower() in PROTO_NAMES:
                protos.add(PROTO_NAMES[p.lower()])
            elif p.isdigit() and int(p) <= 255:
                protos.add(int(p))
            else:
                raise FilterError(f"proto: expected {', '.join(PROTO_NAMES)} or 0..255, got {p!r}")
        states = set()
        for s in vals.get("state", ()):
            if s.lower() not in TCP_STATES:
                raise FilterError(f"state: expected one of {', '.join(TCP_STATES)}, got {s!r}")
            states.add(TCP_STATES.index(s.lower()))
        return cls(
            src=_nets(vals.get("src", ()), "src"),
            dst=_nets(vals.get("dst", ()), "dst"),
            addr=_nets(vals.get("addr", ()), "addr"),
            port=_ranges(vals.get("port", ()), "port", 0xFFFF),
            sport=_ranges(vals.get("sport", ()), "sport", 0xFFFF),
            dport=_ranges(vals.get("dport", ()), "dport", 0xFFFF),
            proto=frozenset(protos),
            state=frozenset(states),
            bucket=_ranges(vals.get("bucket", ()), "bucket", buckets - 1),
            owner=frozenset(vals.get("owner", ())),
            request=vals,
        )

    def to_request(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.request.items()}

    @property
    def empty(self) -> bool:
        return not self.request

    def matches_bucket(self, bucket: int) -> bool:
        """Whether entries of `bucket` can pass (a listing skips the others unread)."""
        return not self.bucket or _in(bucket, self.bucket)

    def matches(self, conn: Connection, bucket: int | None, owners: Iterable[str] = ()) -> bool:
        """Whether `conn` passes. `bucket` is its bucket (None: the data plane
        never classified it, e.g. the sync traffic itself), `owners` the node
        ids that own that bucket now."""
        o = conn.orig
        if self.proto and conn.proto not in self.proto:
            return False
        if self.state and (conn.proto != PROTO_TCP or conn.state not in self.state):
            return False
        if self.bucket and (bucket is None or not _in(bucket, self.bucket)):
            return False
        if self.src and not any(o.src in n for n in self.src):
            return False
        if self.dst and not any(o.dst in n for n in self.dst):
            return False
        if self.addr:
            r = conn.reply
            if not any(a in n for n in self.addr for a in (o.src, o.dst, r.src, r.dst)):
                return False
        if self.sport and not _in(o.sport, self.sport):
            return False
        if self.dport and not _in(o.dport, self.dport):
            return False
        if self.port and not (_in(o.sport, self.port) or _in(o.dport, self.port)):
            return False
        if self.owner:
            names = set(owners) or {"none"}
            if not names & self.owner:
                return False
        return True


def describe_state(conn: Connection) -> str:
    if conn.proto == PROTO_TCP and conn.state < len(TCP_STATES):
        return TCP_STATES[conn.state]
    return "-"


def status_names(status: int) -> list[str]:
    return [name for bit, name in STATUS_NAMES.items() if status & bit]


def entry_row(
    conn: Connection, table: str, bucket: int | None, owners: Iterable[str]
) -> dict[str, Any]:
    """One listed entry as JSON: what `clusterctl ... --json` prints per entry."""
    o, r = conn.orig, conn.reply
    return {
        "table": table,
        "proto": PROTO_BY_NUMBER.get(conn.proto, str(conn.proto)),
        "src": str(ipaddress.ip_address(o.src)),
        "dst": str(ipaddress.ip_address(o.dst)),
        "sport": o.sport,
        "dport": o.dport,
        "reply_src": str(ipaddress.ip_address(r.src)),
        "reply_dst": str(ipaddress.ip_address(r.dst)),
        "reply_sport": r.sport,
        "reply_dport": r.dport,
        "state": describe_state(conn),
        "status": status_names(conn.status),
        "mark": conn.mark,
        "bucket": bucket,
        "owner": sorted(owners),
    }
