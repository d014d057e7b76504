"""Generic netlink messages of the clusterdev kernel module, as bytes.

Building and parsing only (no sockets): `ClusterdevBackend` in clusterdev.py
does the I/O. The numbers mirror kmod/clusterdev/clusterdev_uapi.h; a unit
test reads that header and checks they agree.

Parsing never raises anything but `GenlError` (a malformed or unexpected
message, with `reason` as a short counter label) or `KernelError` (the kernel
answered with a negative errno).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from .early_drop import SlowPathEntry

# <linux/netlink.h>, <linux/genetlink.h>
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLA_F_NESTED = 0x8000  # strict parsing refuses a nest without it
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2

# kmod/clusterdev/clusterdev_uapi.h
FAMILY_NAME = "clusterdev"
FAMILY_VERSION = 1
MAX_BUCKETS = 4096
CMD_SET_CONFIG = 1
CMD_GET_CONFIG = 2
CMD_GET_STATS = 3
CMD_CONFIG_CHANGED = 4  # notification to the "config" multicast group
MCGRP_CONFIG = "config"
HASH_ADDRESSES = 0
HASH_ADDRESSES_PORTS = 1
A_BUCKETS = 1
A_SEED = 2
A_HASH_FIELDS = 3
A_MARK_MASK = 4
A_OWNED = 5
A_STATS_PACKETS = 6
A_STATS_CONNS = 7
A_STATS_DROP_NOT_OWNED = 8
A_STATS_DROP_INVALID = 9
A_PAD = 10
A_STATS_DROP_NOT_OWNED_ESTABLISHED = 11
A_STATS_BUCKET = 12  # nested, GET_STATS dumps only
A_EARLY_DROP = 13  # u8 0/1
A_SLOW_PATH = 14  # nested: SLOW_A_ENTRY nests
A_STATS_EARLY_NOT_OWNED = 15
A_STATS_EARLY_SLOW_PATH = 16
A_STATS_EARLY_UNDECIDED = 17
A_GENERATION = 18  # u32: configuration changes so far (GET_CONFIG, CONFIG_CHANGED)
A_SENDER_PID = 19  # u32: netlink port of the SET_CONFIG's sender (CONFIG_CHANGED)
MAX_SLOW_PATH = 64
SLOW_A_ENTRY = 1
ENTRY_A_ADDR = 1
ENTRY_A_PREFIX = 2
ENTRY_A_PROTO = 3
ENTRY_A_PORT_MIN = 4
ENTRY_A_PORT_MAX = 5
BUCKET_A_INDEX = 1
BUCKET_A_PACKETS = 2
BUCKET_A_CONNS = 3
BUCKET_A_PAD = 4

HASH_FIELDS_CODES = {"addresses": HASH_ADDRESSES, "addresses+ports": HASH_ADDRESSES_PORTS}
# IPPROTO_* of the slow path's protocol names (early_drop.PROTOCOLS)
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "dccp": 33, "udplite": 136,
                    "icmp": 1, "icmpv6": 58}  # fmt: skip

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLATTR = struct.Struct("=HH")  # len, type


class GenlError(Exception):
    """A message from the kernel that does not parse; `reason` is a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class KernelError(Exception):
    """The kernel refused a request with this errno."""

    def __init__(self, errno: int) -> None:
        super().__init__(f"kernel refused the request: errno {errno}")
        self.errno = errno


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    buckets: int
    seed: int
    hash_fields: str
    mark_mask: int
    owned: frozenset[int]
    early_drop: bool = False  # absent from a module before the early decision
    slow_path: tuple[SlowPathEntry, ...] = ()
    generation: int = 0  # absent from a module before the notifications


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigChanged:
    """A CONFIG_CHANGED notification: that (not what) the configuration changed."""

    generation: int
    sender_pid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    packets: tuple[int, ...]  # per bucket
    conns: tuple[int, ...]  # NEW connections accepted, per bucket
    drop_not_owned: int  # NEW packets of buckets not owned
    drop_invalid: int
    drop_not_owned_established: int  # packets of known connections of buckets not owned
    # The receive handler's early decision (0 from a module without it):
    early_not_owned: int = 0  # dropped before the IP stack
    early_slow_path: int = 0  # passed on: a slow_path entry matched
    early_undecided: int = 0  # passed on: not decidable before conntrack


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    type: int
    flags: int
    seq: int
    payload: bytes


def _align4(n: int) -> int:
    return (n + 3) & ~3


def attr(atype: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, atype) + value + b"\0" * (_align4(length) - length)


def nlmsg(mtype: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), mtype, flags, seq, 0) + payload


def genlmsg(family: int, cmd: int, seq: int, attrs: bytes, version: int = FAMILY_VERSION) -> bytes:
    return nlmsg(family, NLM_F_REQUEST | NLM_F_ACK, seq, _GENLMSGHDR.pack(cmd, version, 0) + attrs)


def encode_bitmap(owned: frozenset[int], buckets: int) -> bytes:
    """Bucket b is bit b % 8 of byte b // 8, as the module reads it."""
    out = bytearray((buckets + 7) // 8)
    for b in owned:
        if not 0 <= b < buckets:
            raise ValueError(f"bucket {b} outside 0..{buckets - 1}")
        out[b // 8] |= 1 << (b % 8)
    return bytes(out)


def decode_bitmap(data: bytes) -> frozenset[int]:
    return frozenset(
        i * 8 + bit for i, byte in enumerate(data) for bit in range(8) if byte >> bit & 1
    )


def encode_slow_path(entries: tuple[SlowPathEntry, ...]) -> bytes:
    """The A_SLOW_PATH nest: one SLOW_A_ENTRY nest per entry."""
    if len(entries) > MAX_SLOW_PATH:
        raise ValueError(f"slow_path: at most {MAX_SLOW_PATH} entries, got {len(entries)}")
    out = []
    for e in entries:
        parts = []
        if e.network is not None:
            parts.append(attr(ENTRY_A_ADDR, e.network.network_address.packed))
            parts.append(attr(ENTRY_A_PREFIX, struct.pack("=B", e.network.prefixlen)))
        if e.protocol is not None:
            parts.append(attr(ENTRY_A_PROTO, struct.pack("=B", PROTOCOL_NUMBERS[e.protocol])))
        if e.ports is not None:
            parts.append(attr(ENTRY_A_PORT_MIN, struct.pack("=H", e.ports[0])))
            parts.append(attr(ENTRY_A_PORT_MAX, struct.pack("=H", e.ports[1])))
        out.append(attr(SLOW_A_ENTRY | NLA_F_NESTED, b"".join(parts)))
    return attr(A_SLOW_PATH | NLA_F_NESTED, b"".join(out))


def decode_slow_path(data: bytes) -> tuple[SlowPathEntry, ...]:
    """The A_SLOW_PATH nest of a GET_CONFIG reply."""
    names = {v: k for k, v in PROTOCOL_NUMBERS.items()}
    out = []
    for atype, value in _attr_list(data):
        if atype != SLOW_A_ENTRY:
            raise GenlError("bad_slow_path", f"attribute {atype} in the slow path")
        e = parse_attrs(value)
        network = None
        if ENTRY_A_ADDR in e:
            prefix = _u(e, ENTRY_A_PREFIX, "=B")
            try:
                address = ipaddress.ip_address(e[ENTRY_A_ADDR])
                network = ipaddress.ip_network(f"{address}/{prefix}")
            except ValueError as exc:
                raise GenlError("bad_slow_path", str(exc)) from None
        protocol = None
        if ENTRY_A_PROTO in e:
            number = _u(e, ENTRY_A_PROTO, "=B")
            if number not in names:
                raise GenlError("bad_slow_path", f"protocol {number}")
            protocol = names[number]
        ports = None
        if ENTRY_A_PORT_MIN in e:
            ports = (_u(e, ENTRY_A_PORT_MIN, "=H"), _u(e, ENTRY_A_PORT_MAX, "=H"))
        try:
            out.append(SlowPathEntry(network, protocol, ports))
        except ValueError as exc:
            raise GenlError("bad_slow_path", str(exc)) from None
    return tuple(out)


def get_family_request(seq: int) -> bytes:
    name = attr(CTRL_ATTR_FAMILY_NAME, FAMILY_NAME.encode() + b"\0")
    return genlmsg(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, seq, name, version=1)


def set_config_request(
    family: int,
    seq: int,
    *,
    buckets: int | None = None,
    seed: int | None = None,
    hash_fields: str | None = None,
    mark_mask: int | None = None,
    owned: frozenset[int] | None = None,
    early_drop: bool | None = None,
    slow_path: tuple[SlowPathEntry, ...] | None = None,
) -> bytes:
    """A SET_CONFIG with the given fields; `owned` needs `buckets` to size the
    bitmap; `slow_path` replaces the module's whole list."""
    parts = []
    if buckets is not None:
        parts.append(attr(A_BUCKETS, struct.pack("=I", buckets)))
    if seed is not None:
        parts.append(attr(A_SEED, struct.pack("=I", seed)))
    if hash_fields is not None:
        parts.append(attr(A_HASH_FIELDS, struct.pack("=B", HASH_FIELDS_CODES[hash_fields])))
    if mark_mask is not None:
        parts.append(attr(A_MARK_MASK, struct.pack("=I", mark_mask)))
    if owned is not None:
        if buckets is None:
            raise ValueError("owned needs buckets (the bitmap's size)")
        parts.append(attr(A_OWNED, encode_bitmap(owned, buckets)))
    if early_drop is not None:
        parts.append(attr(A_EARLY_DROP, struct.pack("=B", early_drop)))
    if slow_path is not None:
        parts.append(encode_slow_path(slow_path))
    return genlmsg(family, CMD_SET_CONFIG, seq, b"".join(parts))


def get_config_request(family: int, seq: int) -> bytes:
    return genlmsg(family, CMD_GET_CONFIG, seq, b"")


def get_stats_request(family: int, seq: int) -> bytes:
    return genlmsg(family, CMD_GET_STATS, seq, b"")


def get_stats_dump_request(family: int, seq: int) -> bytes:
    """GET_STATS as a dump: small messages, one nested attribute per busy bucket."""
    payload = _GENLMSGHDR.pack(CMD_GET_STATS, FAMILY_VERSION, 0)
    return nlmsg(family, NLM_F_REQUEST | NLM_F_DUMP, seq, payload)


def parse_messages(data: bytes) -> list[Message]:
    """Split one datagram from a netlink socket into messages."""
    out = []
    off = 0
    while off < len(data):
        if len(data) - off < _NLMSGHDR.size:
            raise GenlError("short_header", f"{len(data) - off} bytes left")
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            raise GenlError("bad_length", f"nlmsg_len {length} at {off} of {len(data)}")
        out.append(Message(mtype, flags, seq, bytes(data[off + _NLMSGHDR.size : off + length])))
        off += _align4(length)
    return out


def check_error(msg: Message) -> None:
    """Raise KernelError for a negative NLMSG_ERROR; an ack (errno 0) is fine."""
    if msg.type != NLMSG_ERROR:
        return
    if len(msg.payload) < 4:
        raise GenlError("short_error")
    (err,) = struct.unpack_from("=i", msg.payload)
    if err < 0:
        raise KernelError(-err)


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of a flat attribute stream; later duplicates win, as in the kernel."""
    return dict(_attr_list(data))


def _genl_attrs(msg: Message, family: int, cmd: int) -> dict[int, bytes]:
    check_error(msg)
    if msg.type != family:
        raise GenlError("unexpected_type", f"type {msg.type}, expected {family}")
    if len(msg.payload) < _GENLMSGHDR.size:
        raise GenlError("short_genl_header")
    got_cmd, _version, _reserved = _GENLMSGHDR.unpack_from(msg.payload)
    if got_cmd != cmd:
        raise GenlError("unexpected_cmd", f"cmd {got_cmd}, expected {cmd}")
    return parse_attrs(msg.payload[_GENLMSGHDR.size :])


def _u(attrs: dict[int, bytes], atype: int, fmt: str) -> int:
    value = attrs.get(atype)
    if value is None:
        raise GenlError("missing_attr", f"attribute {atype}")
    if len(value) != struct.calcsize(fmt):
        raise GenlError("bad_attr_size", f"attribute {atype}: {len(value)} bytes")
    result: int = struct.unpack(fmt, value)[0]
    return result


def parse_family_id(msg: Message) -> int:
    attrs = _genl_attrs(msg, GENL_ID_CTRL, 1)  # CTRL_CMD_NEWFAMILY
    return _u(attrs, CTRL_ATTR_FAMILY_ID, "=H")


def parse_config(msg: Message, family: int) -> Config:
    attrs = _genl_attrs(msg, family, CMD_GET_CONFIG)
    buckets = _u(attrs, A_BUCKETS, "=I")
    code = _u(attrs, A_HASH_FIELDS, "=B")
    names = {v: k for k, v in HASH_FIELDS_CODES.items()}
    if code not in names:
        raise GenlError("bad_hash_fields", str(code))
    bitmap = attrs.get(A_OWNED)
    if bitmap is None or len(bitmap) != (buckets + 7) // 8:
        raise GenlError("bad_bitmap")
    owned = decode_bitmap(bitmap)
    if any(b >= buckets for b in owned):
        raise GenlError("bad_bitmap", "bit beyond bucket count")
    return Config(
        buckets=buckets,
        seed=_u(attrs, A_SEED, "=I"),
        hash_fields=names[code],
        mark_mask=_u(attrs, A_MARK_MASK, "=I"),
        owned=owned,
        early_drop=bool(_u(attrs, A_EARLY_DROP, "=B")) if A_EARLY_DROP in attrs else False,
        slow_path=decode_slow_path(attrs[A_SLOW_PATH]) if A_SLOW_PATH in attrs else (),
        generation=_u(attrs, A_GENERATION, "=I") if A_GENERATION in attrs else 0,
    )


def parse_config_changed(msg: Message, family: int) -> ConfigChanged:
    attrs = _genl_attrs(msg, family, CMD_CONFIG_CHANGED)
    return ConfigChanged(_u(attrs, A_GENERATION, "=I"), _u(attrs, A_SENDER_PID, "=I"))


def parse_mcast_groups(msg: Message) -> dict[str, int]:
    """The family's multicast groups (name -> id) from CTRL_CMD_NEWFAMILY."""
    attrs = _genl_attrs(msg, GENL_ID_CTRL, 1)
    groups = {}
    for _index, nest in _attr_list(attrs.get(CTRL_ATTR_MCAST_GROUPS, b"")):
        group = parse_attrs(nest)
        name = group.get(CTRL_ATTR_MCAST_GRP_NAME, b"").split(b"\0", 1)[0]
        try:
            groups[name.decode()] = _u(group, CTRL_ATTR_MCAST_GRP_ID, "=I")
        except UnicodeDecodeError:
            raise GenlError("bad_group_name", repr(name)) from None
    return groups


def _u64_array(attrs: dict[int, bytes], atype: int) -> tuple[int, ...]:
    data = attrs.get(atype)
    if data is None or len(data) % 8:
        raise GenlError("bad_counters", f"attribute {atype}")
    return tuple(v for (v,) in struct.iter_unpack("=Q", data))


def parse_stats(msg: Message, family: int) -> Stats:
    attrs = _genl_attrs(msg, family, CMD_GET_STATS)
    packets = _u64_array(attrs, A_STATS_PACKETS)
    conns = _u64_array(attrs, A_STATS_CONNS)
    if len(packets) != len(conns):
        raise GenlError("bad_counters", "arrays differ in length")
    return Stats(
        packets=packets,
        conns=conns,
        drop_not_owned=_u(attrs, A_STATS_DROP_NOT_OWNED, "=Q"),
        drop_invalid=_u(attrs, A_STATS_DROP_INVALID, "=Q"),
        drop_not_owned_established=_u(attrs, A_STATS_DROP_NOT_OWNED_ESTABLISHED, "=Q"),
        **_early_counters(attrs),
    )


def _early_counters(attrs: dict[int, bytes]) -> dict[str, int]:
    """The early decision's counters; a module without it sends none (0)."""
    names = {
        "early_not_owned": A_STATS_EARLY_NOT_OWNED,
        "early_slow_path": A_STATS_EARLY_SLOW_PATH,
        "early_undecided": A_STATS_EARLY_UNDECIDED,
    }
    return {k: _u(attrs, a, "=Q") for k, a in names.items() if a in attrs}


def _attr_list(data: bytes) -> list[tuple[int, bytes]]:
    """Every attribute of a stream in order, repeated types kept (nests repeat)."""
    out = []
    off = 0
    while off + _NLATTR.size <= len(data):
        length, atype = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            raise GenlError("bad_attr_length", f"nla_len {length} at {off}")
        out.append((atype & 0x3FFF, bytes(data[off + _NLATTR.size : off + length])))
        off += _align4(length)
    return out


def parse_stats_dump(msgs: list[Message], family: int) -> Stats:
    """The messages of a GET_STATS dump (NLMSG_DONE left out or included):
    the first carries the bucket count and the drop counters, every
    A_STATS_BUCKET nest one bucket's counters; buckets not named are 0."""
    parts = [m for m in msgs if m.type != NLMSG_DONE]
    for m in msgs:
        if m.type == NLMSG_DONE and len(m.payload) >= 4:
            (err,) = struct.unpack_from("=i", m.payload)
            if err < 0:
                raise KernelError(-err)
    if not parts:
        raise GenlError("no_reply")
    head = _genl_attrs(parts[0], family, CMD_GET_STATS)
    buckets = _u(head, A_BUCKETS, "=I")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise GenlError("bad_buckets", str(buckets))
    packets, conns = [0] * buckets, [0] * buckets
    for msg in parts:
        _genl_attrs(msg, family, CMD_GET_STATS)  # type, command, error checks
        for atype, value in _attr_list(msg.payload[_GENLMSGHDR.size :]):
            if atype != A_STATS_BUCKET:
                continue
            nest = parse_attrs(value)
            index = _u(nest, BUCKET_A_INDEX, "=I")
            if index >= buckets:
                raise GenlError("bad_bucket_index", f"{index} of {buckets}")
            packets[index] = _u(nest, BUCKET_A_PACKETS, "=Q")
            conns[index] = _u(nest, BUCKET_A_CONNS, "=Q")
    return Stats(
        packets=tuple(packets),
        conns=tuple(conns),
        drop_not_owned=_u(head, A_STATS_DROP_NOT_OWNED, "=Q"),
        drop_invalid=_u(head, A_STATS_DROP_INVALID, "=Q"),
        drop_not_owned_established=_u(head, A_STATS_DROP_NOT_OWNED_ESTABLISHED, "=Q"),
        **_early_counters(head),
    )
