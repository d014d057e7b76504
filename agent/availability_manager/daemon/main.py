"""`availability-manager`: the agent daemon's command line.

    availability-manager [--config FILE]            run the agent
    availability-manager --check [--config FILE]    validate config and key, then exit
    availability-manager --cleanup [--config FILE]  remove the data plane (systemd ExecStopPost)

User errors (config, key file, missing privileges) print one line naming the
problem and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from pathlib import Path

from ..dataplane.base import DataPlane, DataPlaneConfig
from ..types import format_node_id
from .config import DEFAULT_PATH, AgentConfig, ConfigError, fence_timeout, load_config
from .control import ControlSetupError
from .keyfile import KeyFileError, load_keys
from .state_dir import StateDir, StateDirError
from .transport import ZONE_HEARTBEAT_GROUP

EXIT_USAGE = 2


def dataplane_for(cfg: AgentConfig) -> DataPlane:
    dp_cfg = DataPlaneConfig(
        node_id=cfg.node_id,
        settings=cfg.cluster,
        zones=cfg.zones,
        mark_mask=cfg.mark_mask,
        tcp_loose=cfg.tcp_loose,
        early_drop=cfg.early_drop,
        # the node falls silent when its peers' timeout takes its buckets
        fence_timeout_s=fence_timeout(cfg) if cfg.fence else None,
        zone_heartbeat_port=cfg.sync.port + 1 if cfg.heartbeat.zone_heartbeats else None,
        zone_heartbeat_group=str(ZONE_HEARTBEAT_GROUP),
    )
    if cfg.cluster.backend == "clusterdev":
        from ..dataplane.clusterdev import ClusterdevDataPlane

        return ClusterdevDataPlane(dp_cfg)
    from ..dataplane.nftables import NftablesDataPlane

    return NftablesDataPlane(dp_cfg)


async def _run(cfg: AgentConfig, broadcast: ipaddress.IPv4Address | None, state: StateDir) -> str:
    from ..dataplane.conntrack_netlink import ConntrackSocket
    from ..dataplane.nft_monitor import RulesetMonitor
    from ..dataplane.nft_ruleset import HANDOVER_CHAIN, TABLE
    from .fault_injection import maybe_refusing
    from .links import LinkMonitor
    from .runtime import Runtime
    from .systemd import Notifier
    from .transport import SyncSocket

    metrics = None
    if cfg.metrics.enabled:
        from .metrics import serve

        if not ipaddress.ip_address(cfg.metrics.address).is_loopback:
            # the counters tell an observer which node owns what and how
            # busy it is: say so when they leave the host
            logging.getLogger("availability-manager").warning(
                "metrics.address %s is not a loopback address: the metrics endpoint "
                "is reachable from the network (no authentication)",
                cfg.metrics.address,
            )

        metrics = serve(cfg.metrics.address, cfg.metrics.port)
    sync = SyncSocket(
        cfg.sync.interface,
        cfg.sync.address,
        cfg.sync.port,
        cfg.sync.transport,
        group=cfg.sync.group,
        peers=cfg.sync.peers,
        broadcast=broadcast,
    )
    zone_sockets = []
    if cfg.heartbeat.zone_heartbeats:
        zone_sockets = [
            SyncSocket(
                z.interface,
                ipaddress.IPv4Address("0.0.0.0"),
                cfg.sync.port + 1,
                "multicast",
                group=ZONE_HEARTBEAT_GROUP,
                link_only=True,  # customer-facing links: heartbeats from the link only
            )
            for z in cfg.zones
        ]
    interfaces = [cfg.sync.interface, *(z.interface for z in cfg.zones)]
    runtime = Runtime(
        cfg,
        dataplane_for(cfg),
        # The kernel drops events of unclassified entries (the node's own
        # traffic) before they are queued: dataplane/ct_event_filter.py.
        maybe_refusing(
            ConntrackSocket(mark_mask=cfg.mark_mask, only_marked=True), format_node_id(cfg.node_id)
        ),
        sync,
        LinkMonitor(interfaces),
        Notifier(),
        metrics,
        zone_sockets,
        state,
        RulesetMonitor(TABLE, quiet_chains=frozenset({HANDOVER_CHAIN})),
    )
    return await runtime.run()


def _broadcast_address(cfg: AgentConfig) -> ipaddress.IPv4Address | None:
    """The sync interface's IPv4 broadcast address (read before the loop starts)."""
    if cfg.sync.transport != "broadcast":
        return None
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=cfg.sync.interface)
        for addr in ipr.get_addr(index=idx[0]) if idx else []:
            brd = addr.get_attr("IFA_BROADCAST")
            if brd:
                return ipaddress.IPv4Address(brd)
    raise ConfigError(f"sync.interface {cfg.sync.interface} has no IPv4 broadcast address")


REALTIME_PRIORITY = 20


def _ask_for_realtime() -> None:
    """Heartbeats must not starve behind other work on a busy firewall (a late
    heartbeat looks like a dead node): ask for SCHED_RR, as keepalived does.

    With SCHED_RESET_ON_FORK: the processes the agent starts run at normal
    priority, so an operator's health check or notify hook cannot hold a
    core against the heartbeats for a 100 ms round-robin slice. The data
    plane's own commands, which a restore or a step back waits for, are
    started at the agent's priority explicitly (dataplane/priority.py)."""
    log = logging.getLogger("availability-manager")
    try:
        policy = os.SCHED_RR | os.SCHED_RESET_ON_FORK
        os.sched_setscheduler(0, policy, os.sched_param(REALTIME_PRIORITY))
    except (PermissionError, OSError) as exc:
        log.warning("realtime scheduling refused (%s): running at normal priority", exc)
    else:
        log.info("running with realtime scheduling (SCHED_RR %d)", REALTIME_PRIORITY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="availability-manager", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_PATH, help="configuration file")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="validate the configuration and exit")
    mode.add_argument("--cleanup", action="store_true", help="remove the data plane and exit")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    try:
        cfg = load_config(args.config)
        load_keys(cfg.key_file)
    except (ConfigError, KeyFileError) as exc:
        print(f"availability-manager: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(f"{cfg.path}: configuration valid")
        return 0
    if args.cleanup:
        dataplane_for(cfg).uninstall()
        return 0
    state = StateDir(cfg.state_dir)
    try:
        # Before anything that a second agent for this node would disturb
        # (metrics port, sockets, control socket, data plane).
        state.acquire(format_node_id(cfg.node_id))
    except StateDirError as exc:
        print(f"availability-manager: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if cfg.realtime:
        _ask_for_realtime()
    try:
        # pyroute2 must not run inside the event loop: read what it gives first
        reason = asyncio.run(_run(cfg, _broadcast_address(cfg), state))
    except (ConfigError, StateDirError, KeyFileError, ControlSetupError) as exc:
        print(f"availability-manager: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:
        print(f"availability-manager: permission denied ({exc}); run as root", file=sys.stderr)
        return EXIT_USAGE
    finally:
        state.release()
    logging.getLogger("availability-manager").info("stopped: %s", reason)
    return 0 if reason == "left" else 1


if __name__ == "__main__":
    sys.exit(main())
