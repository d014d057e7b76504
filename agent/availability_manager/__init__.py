"""fwcluster availability-manager: the cluster agent of an active-active
stateful firewall cluster.

Protocol layers (pure, sans-I/O state machines, one module each):
`wire` (byte layouts), `crypto` (authenticated encryption), `availability`
(heartbeats, failure detection), `broadcast` (NAK-based reliable broadcast),
`assignment` + `ranges` (bucket distribution), `conntrack_sync` (connection
table replication), composed by `node.Node`. Drivers: `sim` (deterministic
simulator) and `daemon` (asyncio runtime with data-plane backends).
"""

__version__ = "0.1.0"
