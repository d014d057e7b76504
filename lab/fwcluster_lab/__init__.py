"""fwcluster lab: a whole firewall cluster, its clients and servers, in network
namespaces on one machine, plus a traffic generator with exact counters.

Modules: `topology` (names and addresses, pure), `netns` (running commands and
processes in namespaces), `state` (what a lab created, on disk), `build`
(up/down), `standalone` (forwarding rules when no agent runs), `agent` (agent
config and command), `faults` (kill, revive, partition, loss), `traffic`
(client), `traffic_server`, `traffic_stats` (counters and summary), `cli`.
"""
