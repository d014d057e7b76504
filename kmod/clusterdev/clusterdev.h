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
/* One slow path entry (clusterdev_uapi.h, enum clusterdev_entry_attr). */
struct clusterdev_slow {
	__be32 addr[4];		/* masked with the prefix */
	__be32 mask[4];
	u8 family;		/* 0: any address of either family */
	u8 proto;		/* 0: any */
	u16 port_min;		/* 0 and 0xffff: any port */
	u16 port_max;
};

struct clusterdev_cfg {
	struct rcu_head rcu;
	u32 buckets;
	u32 seed;
	u32 mark_mask;
	u8 mark_shift;		/* lowest set bit of mark_mask */
	u8 hash_fields;
	bool early_drop;
	u8 n_slow;
	u32 generation;		/* +1 on every published change */
	DECLARE_BITMAP(owned, CLUSTERDEV_MAX_BUCKETS);
	/* Sized to n_slow: a namespace without a slow path pays nothing. */
	struct clusterdev_slow slow[];
};

enum clusterdev_drop_reason {
	CLUSTERDEV_DROP_NOT_OWNED,		/* NEW in a bucket not owned */
	CLUSTERDEV_DROP_INVALID,
	CLUSTERDEV_DROP_NOT_OWNED_ESTABLISHED,	/* known, bucket not owned */
	/* The receive handler's early decision (clusterdev_early.c): one drop
	 * and the two ways a packet is passed on to the stack.
	 */
	CLUSTERDEV_DROP_EARLY_NOT_OWNED,
	CLUSTERDEV_EARLY_SLOW_PATH,
	CLUSTERDEV_EARLY_UNDECIDED,
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

/* Count one event on this CPU (receive path and hooks: BH off, ours alone). */
static inline void clusterdev_count(const struct clusterdev_stats *st,
				    enum clusterdev_drop_reason what)
{
	struct clusterdev_pcpu_drops *d = this_cpu_ptr(st->drops);

	u64_stats_update_begin(&d->syncp);
	u64_stats_inc(&d->count[what]);
	u64_stats_update_end(&d->syncp);
}

extern unsigned int clusterdev_net_id;
extern struct rtnl_link_ops clusterdev_link_ops;

static inline struct clusterdev_net *clusterdev_pernet(const struct net *net)
{
	return net_generic(net, clusterdev_net_id);
}

u32 clusterdev_hash_ends(const __be32 *saddr, const __be32 *daddr, unsigned int naddr,
			 u16 sport, u16 dport, u8 proto, const struct clusterdev_cfg *cfg);
bool clusterdev_early_foreign(struct sk_buff *skb, struct net_device *dev);
int clusterdev_link_init(void);
void clusterdev_link_exit(void);
int clusterdev_hook_net_enable(struct net *net);
void clusterdev_hook_net_exit(struct net *net);
int clusterdev_genl_init(void);
void clusterdev_genl_exit(void);

#endif /* _CLUSTERDEV_H */
