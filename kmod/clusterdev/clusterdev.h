/* SPDX-License-Identifier: GPL-2.0-only */
/* clusterdev: what the module's four parts (main, link, hook, genl) share. */
#ifndef _CLUSTERDEV_H
#define _CLUSTERDEV_H

#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
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

struct clusterdev_net {
	struct clusterdev_cfg __rcu *cfg;
	struct mutex cfg_lock;		/* serialises writers of cfg */
	atomic64_t *packets;		/* [CLUSTERDEV_MAX_BUCKETS] */
	atomic64_t *conns;		/* [CLUSTERDEV_MAX_BUCKETS] */
	atomic64_t drop_not_owned;		/* NEW in a bucket not owned */
	atomic64_t drop_invalid;
	atomic64_t drop_not_owned_established;	/* known, bucket not owned */
};

extern unsigned int clusterdev_net_id;
extern struct rtnl_link_ops clusterdev_link_ops;

static inline struct clusterdev_net *clusterdev_pernet(const struct net *net)
{
	return net_generic(net, clusterdev_net_id);
}

int clusterdev_link_init(void);
void clusterdev_link_exit(void);
int clusterdev_hook_net_init(struct net *net);
void clusterdev_hook_net_exit(struct net *net);
int clusterdev_genl_init(void);
void clusterdev_genl_exit(void);

#endif /* _CLUSTERDEV_H */
