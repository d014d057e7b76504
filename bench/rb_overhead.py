"""Reliable-broadcast overhead under induced packet loss (the seed's measurement).

Three nodes, each with a ReliableBroadcast, on a small discrete-event loop of
this file's own (virtual time, no sockets). A test plugin on every node
broadcasts one payload every 100 ms; every 50 ms each node's next_seq goes to
the others (the part of the heartbeat the layer uses, to find lost tails).
Every packet (data, repair, NAK, RbLost, heartbeat) is lost independently per
receiver with probability p. Per loss rate it reports

    Overhead = (NAK + ReSync) / (NAK + ReSync + Sync)

counting packets (NAK: RbNak sent, ReSync: retransmitted RbData, Sync:
original RbData), the delivered fraction and the Out-of-Sync count.

    .venv/bin/python bench/rb_overhead.py            # 60 s per point, writes docs/benchmarks/
    .venv/bin/python bench/rb_overhead.py --quick    # 5 s per point, writes to a temp dir
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import heapq
import itertools
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from availability_manager.broadcast import Delivered, OutOfSync, ReliableBroadcast

ROOT = Path(__file__).resolve().parent.parent
NODES = (0xC6120001, 0xC6120002, 0xC6120003)  # 198.18.0.1..3
PLUGIN_INTERVAL = 0.100
HEARTBEAT_INTERVAL = 0.050
LATENCY = 0.0005  # one switch hop on the sync LAN
LOSS_RATES = [i / 100 for i in range(0, 51, 5)]
GOAL_PP = 2.0  # percentage points
GOAL_UP_TO = 0.30


TUNING_LOSS = [0.05, 0.10, 0.20, 0.30]
# NAK timing variants tried while tuning: slower NAKs batch more gaps per NAK
# (and per retry) at the price of repair delay.
TUNINGS: dict[str, dict[str, float]] = {
    "default: backoff 10 ms, retry 50 ms": {},
    "backoff 100 ms, retry 200 ms": {
        "nak_backoff": 0.1,
        "nak_retry": 0.2,
        "repair_holdoff": 0.1,
    },
    "backoff 500 ms, retry 1 s": {
        "nak_backoff": 0.5,
        "nak_retry": 1.0,
        "repair_holdoff": 0.2,
    },
}


@dataclasses.dataclass
class Point:
    loss: float
    sync: int
    resync: int
    nak: int
    delivered: int
    expected: int
    out_of_sync: int
    order_ok: bool
    delays: list[float]  # send -> delivery, every (payload, receiver) delivered

    @property
    def overhead(self) -> float:
        extra = self.nak + self.resync
        return extra / (extra + self.sync) if extra + self.sync else 0.0

    @property
    def delivered_fraction(self) -> float:
        return self.delivered / self.expected if self.expected else 1.0

    def delay_quantile(self, q: float) -> float:
        if not self.delays:
            return 0.0
        ordered = sorted(self.delays)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def model_overhead(p: float) -> float:
    """Overhead if each data packet that some receiver lost cost exactly one
    NAK and one repair, themselves never lost: a reference, not a bound.
    Every node lossy: each packet has two receivers that may lose it."""
    q = 1 - (1 - p) ** (len(NODES) - 1)
    return 2 * q / (1 + 2 * q)


def model_overhead_one_lossy(p: float) -> float:
    """The same model with one lossy node: two thirds of the packets (those
    of the other two senders) go to it and are lost with probability p."""
    q = p * (len(NODES) - 1) / len(NODES)
    return 2 * q / (1 + 2 * q)


def run_point(
    loss: float,
    duration: float,
    seed: int,
    lossy: frozenset[int] = frozenset(NODES),
    layer: dict[str, float] | None = None,
) -> Point:
    """One loss rate: `duration` seconds of plugin traffic, then a drain in
    which repairs may finish. Only packets to nodes in `lossy` are lost."""
    layer = layer or {}
    rng = random.Random(seed)
    net_rng = random.Random(seed ^ 0x5EED)
    nodes = {
        n: ReliableBroadcast(n, random.Random(rng.getrandbits(64)), now=0.0, **layer)  # type: ignore[arg-type]
        for n in NODES
    }
    for a in nodes.values():
        for b in nodes.values():
            if a is not b:
                a.peer_up(b.node_id, b.next_seq, 0.0)
    # heap of (time, tiebreak, kind, dst, src, item)
    queue: list[tuple[float, int, str, int, int, object]] = []
    tick = itertools.count()
    for i, n in enumerate(NODES):
        # plugins and heartbeats of different nodes out of phase, as in reality
        heapq.heappush(queue, (i * 0.033, next(tick), "plugin", n, n, None))
        heapq.heappush(queue, (i * 0.017, next(tick), "heartbeat", n, n, None))
    sent: dict[int, list[bytes]] = {n: [] for n in NODES}
    sent_at: dict[bytes, float] = {}
    got: dict[tuple[int, int], list[bytes]] = {
        (r, s): [] for r in NODES for s in NODES if r != s
    }
    delays: list[float] = []
    out_of_sync = 0
    end = duration + 2.0 + 10 * layer.get("nak_retry", 0.05)

    def broadcast(src: int, now: float, kind: str, item: object) -> None:
        for dst in NODES:
            if dst != src and not (dst in lossy and net_rng.random() < loss):
                heapq.heappush(queue, (now + LATENCY, next(tick), kind, dst, src, item))

    now = 0.0
    while True:
        for n, node in nodes.items():
            for msg in node.messages_to_send(now):
                broadcast(n, now, "msg", msg)
            while (ev := node.next_event()) is not None:
                if isinstance(ev, Delivered):
                    got[(n, ev.source)].append(ev.payload)
                    delays.append(now - sent_at[ev.payload])
                elif isinstance(ev, OutOfSync):
                    out_of_sync += 1
        timers = [t for node in nodes.values() if (t := node.next_timer()) is not None]
        if queue:
            timers.append(queue[0][0])
        if not timers or min(timers) > end:
            break
        now = max(now, min(timers))
        while queue and queue[0][0] <= now:
            _, _, kind, dst, src, item = heapq.heappop(queue)
            node = nodes[dst]
            if kind == "plugin":
                if now < duration:
                    payload = f"{dst}:{len(sent[dst])}".encode()
                    node.send(payload, now)
                    sent[dst].append(payload)
                    sent_at[payload] = now
                    heapq.heappush(
                        queue, (now + PLUGIN_INTERVAL, next(tick), kind, dst, src, None)
                    )
            elif kind == "heartbeat":
                broadcast(dst, now, "next_seq", node.next_seq)
                heapq.heappush(
                    queue, (now + HEARTBEAT_INTERVAL, next(tick), kind, dst, src, None)
                )
            elif kind == "next_seq":
                assert isinstance(item, int)
                node.observe_next_seq(src, item, now)
            else:
                node.receive(item, src, now)
        for node in nodes.values():
            t = node.next_timer()
            if t is not None and t <= now:
                node.handle_timer(now)

    # FIFO and exactly-once: what a receiver got of a sender is the sent
    # stream, possibly with cuts (out of sync), never reordered or repeated.
    order_ok = all(_is_subsequence(got[(r, s)], sent[s]) for (r, s) in got)
    return Point(
        loss=loss,
        sync=sum(n.stats.data_sent for n in nodes.values()),
        resync=sum(n.stats.retransmitted for n in nodes.values()),
        nak=sum(n.stats.naks_sent for n in nodes.values()),
        delivered=sum(len(v) for v in got.values()),
        expected=sum(len(sent[s]) for (_, s) in got),
        out_of_sync=out_of_sync,
        order_ok=order_ok,
        delays=delays,
    )


def _is_subsequence(got: list[bytes], sent: list[bytes]) -> bool:
    it = iter(sent)
    return all(any(x == y for y in it) for x in got)


def within_goal(p: Point) -> bool:
    return abs(p.overhead - p.loss) * 100 <= GOAL_PP


def goal_met(points: list[Point]) -> bool:
    return all(within_goal(p) for p in points if p.loss <= GOAL_UP_TO + 1e-9)


# -- report -----------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def sweep_table(points: list[Point], model: Callable[[float], float]) -> list[str]:
    rows = [
        (
            "| loss | Sync | ReSync | NAK | overhead | overhead - loss | model | delivered "
            "| p99 delay | out of sync |"
        ),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        rows.append(
            f"| {p.loss:.0%} | {p.sync} | {p.resync} | {p.nak} | {p.overhead:.1%} "
            f"| {(p.overhead - p.loss) * 100:+.1f} pp | {model(p.loss):.1%} "
            f"| {p.delivered_fraction:.2%} | {_ms(p.delay_quantile(0.99))} | {p.out_of_sync} |"
        )
    return rows


def tuning_table(tuning: dict[str, list[Point]]) -> list[str]:
    rows = [
        "| NAK timing | "
        + " | ".join(f"{loss:.0%} loss" for loss in TUNING_LOSS)
        + " |",
        "| --- |" + " ---: |" * len(TUNING_LOSS),
    ]
    for name, points in tuning.items():
        cells = [
            f"{p.overhead:.1%}, p99 {_ms(p.delay_quantile(0.99))}"
            + (
                ""
                if p.delivered == p.expected
                else f", {p.delivered_fraction:.1%} delivered"
            )
            for p in points
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def render_markdown(
    main: list[Point],
    one: list[Point],
    tuning: dict[str, list[Point]],
    command: str,
    duration: float,
    seed: int,
) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    by_loss = {round(p.loss, 2): p for p in main}
    p10, p30 = by_loss[0.1], by_loss[0.3]
    one_ok = [p.loss for p in one if within_goal(p)]
    one_limit = max(
        (p.loss for p in one if all(within_goal(q) for q in one if q.loss <= p.loss)),
        default=0.0,
    )
    verdict = "**met**" if goal_met(main) else "**not met**"
    return "\n".join(
        [
            "## Reliable broadcast: overhead under induced packet loss",
            "",
            f"Command: `{command}` ({stamp}).",
            "",
            f"{duration:g} s of virtual time per point, seed {seed}. Three nodes, each with a `ReliableBroadcast` (defaults: NAK backoff",
            "10 ms, NAK retry 50 ms, repair holdoff 20 ms, 25 NAKs per gap, buffer 16384), on a",
            "discrete-event loop in virtual time (0.5 ms latency, no sockets). Each node's test",
            "plugin broadcasts one payload every 100 ms; every 50 ms each node sends its next",
            "sequence number to the others (the heartbeat field this layer uses). Every packet,",
            "NAKs, repairs and heartbeats included, is lost independently per packet and",
            "receiver. After the traffic, a drain lets the last repairs finish.",
            "",
            "Overhead = (NAK + ReSync) / (NAK + ReSync + Sync), counting packets (Sync: original",
            "data, ReSync: retransmissions, NAK: NAK messages, each naming up to 64 ranges).",
            "*model*: the overhead if every data packet that at least one of the two receivers",
            "lost cost exactly one NAK and one repair, and these were never lost themselves.",
            "*delivered*: (payload, receiver) pairs delivered, in order, exactly once (the bench",
            "checks FIFO and exactly-once and fails otherwise). *p99 delay*: send to delivery.",
            "",
            *sweep_table(main, model_overhead),
            "",
            "![overhead versus loss](benchmarks/rb_overhead.png)",
            "",
            (
                f"**Goal** (overhead within {GOAL_PP:g} percentage points of the loss rate up to "
                f"{GOAL_UP_TO:.0%} loss): {verdict}."
            ),
            "",
            "Why: with three nodes every broadcast has two receivers, each losing it on its own,",
            "so a packet needs a repair with probability 1-(1-p)^2, about twice the loss rate;",
            "and a NAK protocol spends two packets on each repair (a NAK and the",
            "retransmission), before counting lost NAKs and lost repairs. That gives roughly",
            f"four times the loss rate at low loss: the model alone says {model_overhead(0.1):.1%}",
            f"at 10 % loss (measured {p10.overhead:.1%}) and {model_overhead(0.3):.1%} at 30 %",
            f"(measured {p30.overhead:.1%}; the rest is lost NAKs and repairs). Suppression only",
            "saves packets when several receivers miss the same packet (p^2), and batching only",
            "when gaps of one sender overlap in time, which at one payload per 100 ms they",
            "rarely do. Both are implemented (NAK suppression with random backoff, repair",
            "suppression per seq and holdoff, every open gap of a sender in one NAK, retries",
            "falling into step) and this is what remains.",
            "",
            "Tuning tried: slower NAKs, so that more gaps share one NAK (overhead, p99 delay):",
            "",
            *tuning_table(tuning),
            "",
            "Waiting ten times longer saves little and multiplies the repair delay; conntrack",
            "sync wants repairs within a heartbeat or two, so the defaults stay.",
            "",
            "Reference: the same sweep with loss induced at one node only (every packet *to*",
            "that node lost with probability p, the other two lossless; *model* adapted). The",
            "seed does not say where its loss was induced; an overhead close to the loss rate,",
            "as the goal expects, is what this setup gives, since only a third as many",
            "(packet, receiver) pairs are lossy:",
            "",
            *sweep_table(one, model_overhead_one_lossy),
            "",
            (
                "There the overhead is within 2 pp of the loss rate up to "
                f"{one_limit:.0%} loss ({len(one_ok)} of {len(one)} points within 2 pp in all)."
            ),
            "",
        ]
    )


def plot(main: list[Point], one: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.loss * 100 for p in main]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(
        [0, 50], [0, 50], color="grey", linestyle=":", label="y = x (overhead = loss)"
    )
    ax.fill_between(
        [0, GOAL_UP_TO * 100],
        [-GOAL_PP, GOAL_UP_TO * 100 - GOAL_PP],
        [GOAL_PP, GOAL_UP_TO * 100 + GOAL_PP],
        color="tab:green",
        alpha=0.15,
        label=f"goal: within {GOAL_PP:g} pp up to {GOAL_UP_TO:.0%}",
    )
    ax.plot(
        xs,
        [model_overhead(p.loss) * 100 for p in main],
        "--",
        color="tab:orange",
        label="model (all lossy): 1 NAK + 1 repair per lost packet",
    )
    ax.plot(
        xs,
        [p.overhead * 100 for p in main],
        "o-",
        color="tab:blue",
        label="measured, all lossy",
    )
    ax.plot(
        [p.loss * 100 for p in one],
        [p.overhead * 100 for p in one],
        "s-",
        color="tab:purple",
        markersize=4,
        label="measured, one lossy receiver",
    )
    ax.set_xlabel("induced packet loss (%)")
    ax.set_ylabel("overhead (%)")
    ax.set_xlim(0, 50)
    ax.set_ylim(0, max(60, *(p.overhead * 100 + 5 for p in main)))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title("Reliable broadcast overhead, 3 nodes, payload every 100 ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print(label: str, p: Point) -> None:
    print(
        f"{label} loss {p.loss:4.0%}: overhead {p.overhead:6.1%}  sync {p.sync}  "
        f"resync {p.resync}  nak {p.nak}  delivered {p.delivered_fraction:.4%}  "
        f"p99 {_ms(p.delay_quantile(0.99))}  out-of-sync {p.out_of_sync}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="5 s per point, temp output"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of virtual time per point"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help="where the .md and .png go")
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 60.0)
    # A smoke run must not overwrite the real results in docs/.
    default_dir = (
        Path(tempfile.gettempdir()) / "rb_overhead_quick"
        if args.quick
        else ROOT / "docs" / "benchmarks"
    )
    out_dir = args.out_dir or default_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    # Loss points share seeds across scenarios (common random numbers).
    main_points = [
        run_point(loss, duration, args.seed + i) for i, loss in enumerate(LOSS_RATES)
    ]
    one_lossy = frozenset(NODES[-1:])
    one_points = [
        run_point(loss, duration, args.seed + i, lossy=one_lossy)
        for i, loss in enumerate(LOSS_RATES)
    ]
    tuning = {
        name: [
            run_point(loss, duration, args.seed + LOSS_RATES.index(loss), layer=layer)
            for loss in TUNING_LOSS
        ]
        for name, layer in TUNINGS.items()
    }
    for p in main_points:
        _print("all lossy", p)
    for p in one_points:
        _print("one lossy", p)
    broken = [
        p
        for p in [*main_points, *one_points, *itertools.chain(*tuning.values())]
        if not p.order_ok
    ]
    if broken:
        print(
            f"FIFO/exactly-once violated at loss {broken[0].loss:.0%}", file=sys.stderr
        )
        return 1
    command = ".venv/bin/python bench/rb_overhead.py" + (
        " --quick" if args.quick else ""
    )
    if args.duration:
        command += f" --duration {args.duration:g}"
    text = render_markdown(
        main_points, one_points, tuning, command, duration, args.seed
    )
    (out_dir / "rb_overhead.md").write_text(text)
    plot(main_points, one_points, out_dir / "rb_overhead.png")
    print(f"wrote {out_dir / 'rb_overhead.md'} and {out_dir / 'rb_overhead.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
