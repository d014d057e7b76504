/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * clusterdev: generic netlink interface of the connection-based
 * multicast-MAC cluster module. Userspace (the fwcluster agent,
 * agent/availability_manager/dataplane/clusterdev_genl.py) mirrors these
 * numbers; agent/tests/test_clusterdev_genl.py checks that they agree.
 */
#ifndef _UAPI_LINUX_CLUSTERDEV_H
#define _UAPI_LINUX_CLUSTERDEV_H

#define CLUSTERDEV_GENL_NAME	"clusterdev"
#define CLUSTERDEV_GENL_VERSION	1
/* Multicast group: CLUSTERDEV_CMD_CONFIG_CHANGED after every SET_CONFIG that
 * changed something; joining needs CAP_NET_ADMIN in the netns' user namespace.
 */
#define CLUSTERDEV_MCGRP_CONFIG	"config"

#define CLUSTERDEV_MAX_BUCKETS	4096
#define CLUSTERDEV_BITMAP_BYTES	(CLUSTERDEV_MAX_BUCKETS / 8)

enum clusterdev_cmd {
	CLUSTERDEV_CMD_UNSPEC,
	CLUSTERDEV_CMD_SET_CONFIG,	/* any subset of the config attributes */
	CLUSTERDEV_CMD_GET_CONFIG,	/* reply: every config attribute */
	/* reply: counters (doit: whole arrays; dump: nested per bucket) */
	CLUSTERDEV_CMD_GET_STATS,
	/* notification (group "config"): GENERATION and who changed it
	 * (SENDER_PID); read the configuration itself with GET_CONFIG
	 */
	CLUSTERDEV_CMD_CONFIG_CHANGED,
	__CLUSTERDEV_CMD_MAX,
};

#define CLUSTERDEV_CMD_MAX (__CLUSTERDEV_CMD_MAX - 1)

enum clusterdev_hash_fields {
	CLUSTERDEV_HASH_ADDRESSES,		/* source and destination address */
	CLUSTERDEV_HASH_ADDRESSES_PORTS,	/* addresses, ports (ICMP id), protocol */
	__CLUSTERDEV_HASH_MAX,
};

#define CLUSTERDEV_HASH_MAX (__CLUSTERDEV_HASH_MAX - 1)

enum clusterdev_attr {
	CLUSTERDEV_A_UNSPEC,
	CLUSTERDEV_A_BUCKETS,		/* u32, 1..CLUSTERDEV_MAX_BUCKETS */
	CLUSTERDEV_A_SEED,		/* u32 */
	CLUSTERDEV_A_HASH_FIELDS,	/* u8, enum clusterdev_hash_fields */
	CLUSTERDEV_A_MARK_MASK,		/* u32, contiguous, holds buckets + 1 */
	/* binary: bit b (byte b/8, bit b%8) = bucket b owned; exactly
	 * ceil(buckets/8) bytes
	 */
	CLUSTERDEV_A_OWNED,
	CLUSTERDEV_A_STATS_PACKETS,	/* binary: u64 per bucket, host order */
	CLUSTERDEV_A_STATS_CONNS,	/* binary: u64 per bucket, host order */
	CLUSTERDEV_A_STATS_DROP_NOT_OWNED,	/* u64: NEW in a bucket we do not own */
	CLUSTERDEV_A_STATS_DROP_INVALID,	/* u64: conntrack said invalid */
	CLUSTERDEV_A_PAD,
	/* u64: known connection of a bucket we do not own */
	CLUSTERDEV_A_STATS_DROP_NOT_OWNED_ESTABLISHED,
	/* nested (enum clusterdev_bucket_attr), GET_STATS dumps only: one per
	 * bucket with a counter above 0; the dump's first message carries
	 * BUCKETS and the three drop counters instead
	 */
	CLUSTERDEV_A_STATS_BUCKET,
	/* u8 0/1: drop provably foreign packets in the receive handler, before
	 * the IP stack (off by default; see docs/clusterdev.md, "Early drop")
	 */
	CLUSTERDEV_A_EARLY_DROP,
	/* nested: CLUSTERDEV_SLOW_A_ENTRY nests (enum clusterdev_slow_attr), at
	 * most CLUSTERDEV_MAX_SLOW_PATH; replaces the whole list. Traffic from or
	 * to an entry is never dropped early (DNAT targets, helpers' servers,
	 * SNAT pools that are not local addresses)
	 */
	CLUSTERDEV_A_SLOW_PATH,
	CLUSTERDEV_A_STATS_EARLY_NOT_OWNED,	/* u64: dropped early, bucket not owned */
	CLUSTERDEV_A_STATS_EARLY_SLOW_PATH,	/* u64: passed on, a slow path entry matched */
	CLUSTERDEV_A_STATS_EARLY_UNDECIDED,	/* u64: passed on, not decidable early */
	/* u32: counts the namespace's configuration changes (GET_CONFIG,
	 * CONFIG_CHANGED), so a listener knows whether it missed one
	 */
	CLUSTERDEV_A_GENERATION,
	CLUSTERDEV_A_SENDER_PID,	/* u32: netlink port id of the SET_CONFIG's sender */
	__CLUSTERDEV_A_MAX,
};

#define CLUSTERDEV_A_MAX (__CLUSTERDEV_A_MAX - 1)

enum clusterdev_bucket_attr {
	CLUSTERDEV_BUCKET_A_UNSPEC,
	CLUSTERDEV_BUCKET_A_INDEX,	/* u32: the bucket */
	CLUSTERDEV_BUCKET_A_PACKETS,	/* u64: packets passed */
	CLUSTERDEV_BUCKET_A_CONNS,	/* u64: NEW connections accepted */
	CLUSTERDEV_BUCKET_A_PAD,
	__CLUSTERDEV_BUCKET_A_MAX,
};

#define CLUSTERDEV_BUCKET_A_MAX (__CLUSTERDEV_BUCKET_A_MAX - 1)

#define CLUSTERDEV_MAX_SLOW_PATH	64

/* Inside CLUSTERDEV_A_SLOW_PATH: one nest per entry. */
enum clusterdev_slow_attr {
	CLUSTERDEV_SLOW_A_UNSPEC,
	CLUSTERDEV_SLOW_A_ENTRY,	/* nested, enum clusterdev_entry_attr */
	__CLUSTERDEV_SLOW_A_MAX,
};

#define CLUSTERDEV_SLOW_A_MAX (__CLUSTERDEV_SLOW_A_MAX - 1)

/*
 * A slow path entry matches a packet from or to it: source address in the
 * network and source port in the range, or the same for the destination.
 * ADDR and PREFIX come together (absent: any address, either family);
 * PROTO absent or 0: any protocol; PORT_MIN/PORT_MAX need a port protocol.
 */
enum clusterdev_entry_attr {
	CLUSTERDEV_ENTRY_A_UNSPEC,
	CLUSTERDEV_ENTRY_A_ADDR,	/* binary: 4 (IPv4) or 16 (IPv6) bytes, network order */
	CLUSTERDEV_ENTRY_A_PREFIX,	/* u8: prefix length */
	CLUSTERDEV_ENTRY_A_PROTO,	/* u8: IPPROTO_* */
	CLUSTERDEV_ENTRY_A_PORT_MIN,	/* u16, host order */
	CLUSTERDEV_ENTRY_A_PORT_MAX,	/* u16, host order */
	__CLUSTERDEV_ENTRY_A_MAX,
};

#define CLUSTERDEV_ENTRY_A_MAX (__CLUSTERDEV_ENTRY_A_MAX - 1)

#endif /* _UAPI_LINUX_CLUSTERDEV_H */
