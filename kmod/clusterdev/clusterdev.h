/* SPDX-License-Identifier: GPL-2.0-only */
/* clusterdev: what the module's four parts (main, link, hook, genl) share. */
#ifndef _CLUSTERDEV_H
#define _CLUSTERDEV_H

#include <linux/bitmap.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/u64_stats_sync.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>
#include <net/rtnetlink.h>

#include "clusterdev_uapi.h"

/*
 * One configuration of a network namespace. Never changed once published:
 * the genl SET_CONFIG handler builds a new one and swaps the pointer, so the
 * packet path sees either the old or the new bucket set, never a mix.
 */
struct clusterdev_cfg {
	struct rcu_head rcu;
	u32 buckets;
	u32 seed;
	u32 mark_mask;
	u8 mark_shift;		/* lowest set bit of mark_mask */
	u8 hash_fields;
	DECLARE_BITMAP(owned, CLUSTERDEV_MAX_BUCKETS);
};

enum clusterdev_drop_reason {
	CLUSTERDEV_DROP_NOT_OWNED,		/* NEW in a bucket not owned */
	CLUSTERDEV_DROP_INVALID,
	CLUSTERDEV_DROP_NOT_OWNED_ESTABLISHED,	/* known, bucket not owned */
	CLUSTERDEV_DROP_REASONS,
};

/* Counters of one CPU: each CPU counts alone, GET_STATS adds them up. */
struct clusterdev_pcpu_drops {
	u64_stats_t count[CLUSTERDEV_DROP_REASONS];
	struct u64_stats_sync syncp;		/* also covers the bucket arrays */
};

/*
 * The packet path's counters of a namespace, allocated with its first
 * clusterdev link (a namespace without one pays nothing) and freed with the
 * namespace. The per-bucket arrays are two allocations: one per-CPU object
 * may not exceed 32 KiB.
 */
struct clusterdev_stats {
	struct clusterdev_pcpu_drops __percpu *drops;
	u64_stats_t __percpu *packets;		/* [CLUSTERDEV_MAX_BUCKETS] */
	u64_stats_t __percpu *conns;		/* [CLUSTERDEV_MAX_BUCKETS] */
};

struct clusterdev_net {
	struct clusterdev_cfg __rcu *cfg;
	struct mutex cfg_lock;		/* serialises writers of cfg */
	/* Set once (under RTNL) with the first link, before the hooks. */
	struct clusterdev_stats *stats;
	bool hooks_registered;		/* under RTNL */
};

extern unsigned int clusterdev_net_id;
extern struct rtnl_link_ops clusterdev_link_ops;

static inline struct clusterdev_net *clusterdev_pernet(const struct net *net)
{
	return net_generic(net, clusterdev_net_id);
}

int clusterdev_link_init(void);
void clusterdev_link_exit(void);
int clusterdev_hook_net_enable(struct net *net);
void clusterdev_hook_net_exit(struct net *net);
int clusterdev_genl_init(void);
void clusterdev_genl_exit(void);

#endif /* _CLUSTERDEV_H */
