// SPDX-License-Identifier: GPL-2.0-only
/*
 * clusterdev: configuration over generic netlink (family "clusterdev").
 * Every attribute is typed and bounded by the policy; what the policy cannot
 * express (mask shape, bitmap length against the bucket count) is checked
 * here before anything changes. A SET_CONFIG applies all of its attributes or
 * none: the new configuration is built aside and published with one pointer
 * swap (RCU), so packets see the old bucket set or the new one.
 */
#include <linux/bitops.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <net/genetlink.h>
#include <net/sock.h>

#include "clusterdev.h"

static const struct nla_policy clusterdev_entry_policy[CLUSTERDEV_ENTRY_A_MAX + 1] = {
	[CLUSTERDEV_ENTRY_A_ADDR] = { .type = NLA_BINARY, .len = sizeof(struct in6_addr) },
	[CLUSTERDEV_ENTRY_A_PREFIX] = NLA_POLICY_MAX(NLA_U8, 128),
	[CLUSTERDEV_ENTRY_A_PROTO] = { .type = NLA_U8 },
	[CLUSTERDEV_ENTRY_A_PORT_MIN] = { .type = NLA_U16 },
	[CLUSTERDEV_ENTRY_A_PORT_MAX] = { .type = NLA_U16 },
};

static const struct nla_policy clusterdev_slow_policy[CLUSTERDEV_SLOW_A_MAX + 1] = {
	[CLUSTERDEV_SLOW_A_ENTRY] = NLA_POLICY_NESTED(clusterdev_entry_policy),
};

static const struct nla_policy clusterdev_policy[CLUSTERDEV_A_MAX + 1] = {
	[CLUSTERDEV_A_BUCKETS] = NLA_POLICY_RANGE(NLA_U32, 1, CLUSTERDEV_MAX_BUCKETS),
	[CLUSTERDEV_A_SEED] = { .type = NLA_U32 },
	[CLUSTERDEV_A_HASH_FIELDS] = NLA_POLICY_MAX(NLA_U8, CLUSTERDEV_HASH_MAX),
	[CLUSTERDEV_A_MARK_MASK] = { .type = NLA_U32 },
	[CLUSTERDEV_A_OWNED] = { .type = NLA_BINARY, .len = CLUSTERDEV_BITMAP_BYTES },
	/* Reply-only attributes: refused on input. */
	[CLUSTERDEV_A_STATS_PACKETS] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_CONNS] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_DROP_NOT_OWNED] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_DROP_INVALID] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_PAD] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_DROP_NOT_OWNED_ESTABLISHED] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_BUCKET] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_EARLY_DROP] = NLA_POLICY_MAX(NLA_U8, 1),
	[CLUSTERDEV_A_SLOW_PATH] = NLA_POLICY_NESTED(clusterdev_slow_policy),
	[CLUSTERDEV_A_STATS_EARLY_NOT_OWNED] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_EARLY_SLOW_PATH] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_STATS_EARLY_UNDECIDED] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_GENERATION] = { .type = NLA_REJECT },
	[CLUSTERDEV_A_SENDER_PID] = { .type = NLA_REJECT },
};

enum clusterdev_mcgrp {
	CLUSTERDEV_MCGRP_CONFIG_ID,	/* index in clusterdev_mcgrps */
};

/* The group tells listeners that something changed, never what: reading the
 * configuration (seed, bitmap) stays GET_CONFIG's, which needs CAP_NET_ADMIN;
 * joining the group needs it as well.
 */
static const struct genl_multicast_group clusterdev_mcgrps[] = {
	[CLUSTERDEV_MCGRP_CONFIG_ID] = {
		.name = CLUSTERDEV_MCGRP_CONFIG,
		.flags = GENL_MCAST_CAP_NET_ADMIN,
	},
};

static bool clusterdev_is_port_proto(u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP ||
	       proto == IPPROTO_DCCP || proto == IPPROTO_UDPLITE;
}

/* One CLUSTERDEV_SLOW_A_ENTRY nest (already checked against its policy). */
static int clusterdev_parse_slow(const struct nlattr *nest, struct clusterdev_slow *e,
				 struct netlink_ext_ack *extack)
{
	struct nlattr *tb[CLUSTERDEV_ENTRY_A_MAX + 1];
	unsigned int words, prefix, i;
	int err;

	err = nla_parse_nested(tb, CLUSTERDEV_ENTRY_A_MAX, nest, clusterdev_entry_policy, extack);
	if (err)
		return err;
	memset(e, 0, sizeof(*e));
	e->port_max = U16_MAX;
	if (!!tb[CLUSTERDEV_ENTRY_A_ADDR] != !!tb[CLUSTERDEV_ENTRY_A_PREFIX]) {
		NL_SET_ERR_MSG_ATTR(extack, nest, "slow path entry: address and prefix together");
		return -EINVAL;
	}
	if (tb[CLUSTERDEV_ENTRY_A_PROTO])
		e->proto = nla_get_u8(tb[CLUSTERDEV_ENTRY_A_PROTO]);
	if (tb[CLUSTERDEV_ENTRY_A_PORT_MIN] || tb[CLUSTERDEV_ENTRY_A_PORT_MAX]) {
		if (!tb[CLUSTERDEV_ENTRY_A_PORT_MIN] || !tb[CLUSTERDEV_ENTRY_A_PORT_MAX] ||
		    !clusterdev_is_port_proto(e->proto)) {
			NL_SET_ERR_MSG_ATTR(extack, nest,
					    "slow path entry: ports need both bounds and a port protocol");
			return -EINVAL;
		}
		e->port_min = nla_get_u16(tb[CLUSTERDEV_ENTRY_A_PORT_MIN]);
		e->port_max = nla_get_u16(tb[CLUSTERDEV_ENTRY_A_PORT_MAX]);
		if (e->port_min > e->port_max) {
			NL_SET_ERR_MSG_ATTR(extack, nest, "slow path entry: ports upside down");
			return -EINVAL;
		}
	} else if (!tb[CLUSTERDEV_ENTRY_A_ADDR]) {
		NL_SET_ERR_MSG_ATTR(extack, nest, "slow path entry: needs an address or ports");
		return -EINVAL;
	}
	if (!tb[CLUSTERDEV_ENTRY_A_ADDR])
		return 0;

	switch (nla_len(tb[CLUSTERDEV_ENTRY_A_ADDR])) {
	case sizeof(struct in_addr):
		e->family = NFPROTO_IPV4;
		words = 1;
		break;
	case sizeof(struct in6_addr):
		e->family = NFPROTO_IPV6;
		words = 4;
		break;
	default:
		NL_SET_ERR_MSG_ATTR(extack, tb[CLUSTERDEV_ENTRY_A_ADDR],
				    "slow path address must be 4 or 16 bytes");
		return -EINVAL;
	}
	prefix = nla_get_u8(tb[CLUSTERDEV_ENTRY_A_PREFIX]);
	if (prefix > words * 32) {
		NL_SET_ERR_MSG_ATTR(extack, tb[CLUSTERDEV_ENTRY_A_PREFIX],
				    "slow path prefix longer than the address");
		return -EINVAL;
	}
	memcpy(e->addr, nla_data(tb[CLUSTERDEV_ENTRY_A_ADDR]), words * sizeof(__be32));
	for (i = 0; i < words; i++, prefix -= min(prefix, 32U)) {
		e->mask[i] = prefix >= 32 ? htonl(~0U) : htonl(prefix ? ~0U << (32 - prefix) : 0);
		e->addr[i] &= e->mask[i];
	}
	return 0;
}

/* Entries in a CLUSTERDEV_A_SLOW_PATH nest, or a negative errno. */
static int clusterdev_count_slow(const struct nlattr *list, struct netlink_ext_ack *extack)
{
	const struct nlattr *nest;
	int n = 0, rem;

	nla_for_each_nested(nest, list, rem) {
		if (nla_type(nest) != CLUSTERDEV_SLOW_A_ENTRY || ++n > CLUSTERDEV_MAX_SLOW_PATH) {
			NL_SET_ERR_MSG_ATTR(extack, nest, "slow path: at most 64 entries");
			return -E2BIG;
		}
	}
	return n;
}

static struct genl_family clusterdev_genl_family;

/* CONFIG_CHANGED to the namespace's listeners, if there are any. */
static void clusterdev_notify(struct net *net, u32 generation, u32 sender)
{
	struct sk_buff *msg;
	void *hdr;

	if (!genl_has_listeners(&clusterdev_genl_family, net, CLUSTERDEV_MCGRP_CONFIG_ID))
		return;
	msg = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!msg)
		return;
	hdr = genlmsg_put(msg, 0, 0, &clusterdev_genl_family, 0, CLUSTERDEV_CMD_CONFIG_CHANGED);
	if (!hdr || nla_put_u32(msg, CLUSTERDEV_A_GENERATION, generation) ||
	    nla_put_u32(msg, CLUSTERDEV_A_SENDER_PID, sender)) {
		nlmsg_free(msg);
		return;
	}
	genlmsg_end(msg, hdr);
	genlmsg_multicast_netns(&clusterdev_genl_family, net, msg, 0,
				CLUSTERDEV_MCGRP_CONFIG_ID, GFP_KERNEL);
}

static int clusterdev_set_config(struct sk_buff *skb, struct genl_info *info)
{
	struct clusterdev_net *cn = clusterdev_pernet(genl_info_net(info));
	struct nlattr **tb = info->attrs;
	struct clusterdev_cfg *old, *cfg;
	const struct nlattr *nest;
	int err = 0, n_slow = -1, rem, i = 0;

	if (tb[CLUSTERDEV_A_SLOW_PATH]) {
		n_slow = clusterdev_count_slow(tb[CLUSTERDEV_A_SLOW_PATH], info->extack);
		if (n_slow < 0)
			return n_slow;
	}

	mutex_lock(&cn->cfg_lock);
	old = rcu_dereference_protected(cn->cfg, lockdep_is_held(&cn->cfg_lock));
	if (n_slow < 0)
		n_slow = old->n_slow;	/* the list is kept unless replaced */
	cfg = kmalloc(struct_size(cfg, slow, n_slow), GFP_KERNEL);
	if (!cfg) {
		mutex_unlock(&cn->cfg_lock);
		return -ENOMEM;
	}
	*cfg = *old;
	cfg->n_slow = n_slow;
	if (!tb[CLUSTERDEV_A_SLOW_PATH]) {
		memcpy(cfg->slow, old->slow, n_slow * sizeof(cfg->slow[0]));
	} else {
		nla_for_each_nested(nest, tb[CLUSTERDEV_A_SLOW_PATH], rem) {
			err = clusterdev_parse_slow(nest, &cfg->slow[i++], info->extack);
			if (err)
				goto out;
		}
	}
	if (tb[CLUSTERDEV_A_EARLY_DROP])
		cfg->early_drop = nla_get_u8(tb[CLUSTERDEV_A_EARLY_DROP]);

	if (tb[CLUSTERDEV_A_BUCKETS]) {
		cfg->buckets = nla_get_u32(tb[CLUSTERDEV_A_BUCKETS]);
		/* Bucket numbers change meaning: own nothing unless told. */
		if (cfg->buckets != old->buckets)
			bitmap_zero(cfg->owned, CLUSTERDEV_MAX_BUCKETS);
	}
	if (tb[CLUSTERDEV_A_SEED])
		cfg->seed = nla_get_u32(tb[CLUSTERDEV_A_SEED]);
	if (tb[CLUSTERDEV_A_HASH_FIELDS])
		cfg->hash_fields = nla_get_u8(tb[CLUSTERDEV_A_HASH_FIELDS]);
	if (tb[CLUSTERDEV_A_MARK_MASK]) {
		u32 mask = nla_get_u32(tb[CLUSTERDEV_A_MARK_MASK]);

		/* Contiguous bits (e.g. 0x0000ffff): bucket + 1 is a field in it. */
		if (!mask || ((mask >> __ffs(mask)) & ((mask >> __ffs(mask)) + 1))) {
			NL_SET_ERR_MSG_ATTR(info->extack, tb[CLUSTERDEV_A_MARK_MASK],
					    "mark mask must be one run of contiguous bits");
			err = -EINVAL;
			goto out;
		}
		cfg->mark_mask = mask;
		cfg->mark_shift = __ffs(mask);
	}
	if ((u64)cfg->buckets > (cfg->mark_mask >> cfg->mark_shift)) {
		NL_SET_ERR_MSG(info->extack, "mark mask too narrow for bucket count + 1");
		err = -ERANGE;
		goto out;
	}
	if (tb[CLUSTERDEV_A_OWNED]) {
		const u8 *bytes = nla_data(tb[CLUSTERDEV_A_OWNED]);
		unsigned int i;

		if (nla_len(tb[CLUSTERDEV_A_OWNED]) != DIV_ROUND_UP(cfg->buckets, 8)) {
			NL_SET_ERR_MSG_ATTR(info->extack, tb[CLUSTERDEV_A_OWNED],
					    "bitmap must be ceil(buckets / 8) bytes");
			err = -EINVAL;
			goto out;
		}
		bitmap_zero(cfg->owned, CLUSTERDEV_MAX_BUCKETS);
		for (i = 0; i < CLUSTERDEV_MAX_BUCKETS && i / 8 < nla_len(tb[CLUSTERDEV_A_OWNED]);
		     i++) {
			if (!(bytes[i / 8] & BIT(i % 8)))
				continue;
			if (i >= cfg->buckets) {
				NL_SET_ERR_MSG_ATTR(info->extack, tb[CLUSTERDEV_A_OWNED],
						    "bitmap owns a bucket beyond the bucket count");
				err = -EINVAL;
				goto out;
			}
			__set_bit(i, cfg->owned);
		}
	}

	cfg->generation = old->generation + 1;
	rcu_assign_pointer(cn->cfg, cfg);
	mutex_unlock(&cn->cfg_lock);
	kfree_rcu(old, rcu);
	clusterdev_notify(genl_info_net(info), cfg->generation, info->snd_portid);
	return 0;

out:
	mutex_unlock(&cn->cfg_lock);
	kfree(cfg);
	return err;
}

/* Upper bound of one entry's nest in a reply (address, prefix, protocol, ports). */
#define CLUSTERDEV_SLOW_ENTRY_SIZE \
	(nla_total_size(0) + nla_total_size(sizeof(struct in6_addr)) + \
	 2 * nla_total_size(sizeof(u8)) + 2 * nla_total_size(sizeof(u16)))

static int clusterdev_put_slow_path(struct sk_buff *msg, const struct clusterdev_cfg *cfg)
{
	struct nlattr *list, *nest;
	unsigned int i, words, prefix, w;

	list = nla_nest_start(msg, CLUSTERDEV_A_SLOW_PATH);
	if (!list)
		return -EMSGSIZE;
	for (i = 0; i < cfg->n_slow; i++) {
		const struct clusterdev_slow *e = &cfg->slow[i];

		nest = nla_nest_start(msg, CLUSTERDEV_SLOW_A_ENTRY);
		if (!nest)
			return -EMSGSIZE;
		if (e->family) {
			words = e->family == NFPROTO_IPV4 ? 1 : 4;
			for (prefix = 0, w = 0; w < words; w++)
				prefix += hweight32(ntohl(e->mask[w]));
			if (nla_put(msg, CLUSTERDEV_ENTRY_A_ADDR, words * 4, e->addr) ||
			    nla_put_u8(msg, CLUSTERDEV_ENTRY_A_PREFIX, prefix))
				return -EMSGSIZE;
		}
		if (e->proto && nla_put_u8(msg, CLUSTERDEV_ENTRY_A_PROTO, e->proto))
			return -EMSGSIZE;
		if (clusterdev_is_port_proto(e->proto) &&
		    (nla_put_u16(msg, CLUSTERDEV_ENTRY_A_PORT_MIN, e->port_min) ||
		     nla_put_u16(msg, CLUSTERDEV_ENTRY_A_PORT_MAX, e->port_max)))
			return -EMSGSIZE;
		nla_nest_end(msg, nest);
	}
	nla_nest_end(msg, list);
	return 0;
}

static int clusterdev_get_config(struct sk_buff *skb, struct genl_info *info)
{
	struct clusterdev_net *cn = clusterdev_pernet(genl_info_net(info));
	const struct clusterdev_cfg *cfg;
	struct sk_buff *msg;
	struct nlattr *nla;
	unsigned int i;
	void *hdr;
	u8 *bytes;

	msg = genlmsg_new(NLMSG_DEFAULT_SIZE + CLUSTERDEV_BITMAP_BYTES +
			  CLUSTERDEV_MAX_SLOW_PATH * CLUSTERDEV_SLOW_ENTRY_SIZE, GFP_KERNEL);
	if (!msg)
		return -ENOMEM;
	hdr = genlmsg_put_reply(msg, info, &clusterdev_genl_family, 0, CLUSTERDEV_CMD_GET_CONFIG);
	if (!hdr)
		goto nla_failure;

	mutex_lock(&cn->cfg_lock);
	cfg = rcu_dereference_protected(cn->cfg, lockdep_is_held(&cn->cfg_lock));
	if (nla_put_u32(msg, CLUSTERDEV_A_BUCKETS, cfg->buckets) ||
	    nla_put_u32(msg, CLUSTERDEV_A_SEED, cfg->seed) ||
	    nla_put_u8(msg, CLUSTERDEV_A_HASH_FIELDS, cfg->hash_fields) ||
	    nla_put_u32(msg, CLUSTERDEV_A_MARK_MASK, cfg->mark_mask))
		goto unlock_failure;
	nla = nla_reserve(msg, CLUSTERDEV_A_OWNED, DIV_ROUND_UP(cfg->buckets, 8));
	if (!nla)
		goto unlock_failure;
	bytes = nla_data(nla);
	memset(bytes, 0, nla_len(nla));
	for_each_set_bit(i, cfg->owned, cfg->buckets)
		bytes[i / 8] |= BIT(i % 8);
	if (nla_put_u8(msg, CLUSTERDEV_A_EARLY_DROP, cfg->early_drop) ||
	    nla_put_u32(msg, CLUSTERDEV_A_GENERATION, cfg->generation) ||
	    clusterdev_put_slow_path(msg, cfg))
		goto unlock_failure;
	mutex_unlock(&cn->cfg_lock);

	genlmsg_end(msg, hdr);
	return genlmsg_reply(msg, info);

unlock_failure:
	mutex_unlock(&cn->cfg_lock);
nla_failure:
	nlmsg_free(msg);
	return -EMSGSIZE;
}

/* The sums over every CPU; all zero before the namespace's first link. */
static void clusterdev_sum_drops(const struct clusterdev_stats *st,
				 u64 sum[CLUSTERDEV_DROP_REASONS])
{
	u64 v[CLUSTERDEV_DROP_REASONS];
	unsigned int start;
	int cpu, r;

	memset(sum, 0, CLUSTERDEV_DROP_REASONS * sizeof(u64));
	if (!st)
		return;
	for_each_possible_cpu(cpu) {
		const struct clusterdev_pcpu_drops *d = per_cpu_ptr(st->drops, cpu);

		do {
			start = u64_stats_fetch_begin(&d->syncp);
			for (r = 0; r < CLUSTERDEV_DROP_REASONS; r++)
				v[r] = u64_stats_read(&d->count[r]);
		} while (u64_stats_fetch_retry(&d->syncp, start));
		for (r = 0; r < CLUSTERDEV_DROP_REASONS; r++)
			sum[r] += v[r];
	}
}

/* One bucket's counters summed over every CPU. */
static void clusterdev_sum_bucket(const struct clusterdev_stats *st, u32 bucket,
				  u64 *packets, u64 *conns)
{
	unsigned int start;
	u64 p, c;
	int cpu;

	*packets = 0;
	*conns = 0;
	if (!st)
		return;
	for_each_possible_cpu(cpu) {
		const struct clusterdev_pcpu_drops *d = per_cpu_ptr(st->drops, cpu);

		do {
			start = u64_stats_fetch_begin(&d->syncp);
			p = u64_stats_read(per_cpu_ptr(st->packets, cpu) + bucket);
			c = u64_stats_read(per_cpu_ptr(st->conns, cpu) + bucket);
		} while (u64_stats_fetch_retry(&d->syncp, start));
		*packets += p;
		*conns += c;
	}
}

/* The doit reply's arrays: u64 per bucket, host order. */
static int clusterdev_put_arrays(struct sk_buff *msg, const struct clusterdev_stats *st, u32 n)
{
	struct nlattr *pkts, *conns;
	u64 *p, *c;
	u32 i;

	pkts = nla_reserve_64bit(msg, CLUSTERDEV_A_STATS_PACKETS, n * sizeof(u64),
				 CLUSTERDEV_A_PAD);
	conns = nla_reserve_64bit(msg, CLUSTERDEV_A_STATS_CONNS, n * sizeof(u64),
				  CLUSTERDEV_A_PAD);
	if (!pkts || !conns)
		return -EMSGSIZE;
	p = nla_data(pkts);
	c = nla_data(conns);
	for (i = 0; i < n; i++)
		clusterdev_sum_bucket(st, i, &p[i], &c[i]);
	return 0;
}

static int clusterdev_put_drops(struct sk_buff *msg, const struct clusterdev_stats *st)
{
	u64 drops[CLUSTERDEV_DROP_REASONS];

	clusterdev_sum_drops(st, drops);
	if (nla_put_u64_64bit(msg, CLUSTERDEV_A_STATS_DROP_NOT_OWNED,
			      drops[CLUSTERDEV_DROP_NOT_OWNED], CLUSTERDEV_A_PAD) ||
	    nla_put_u64_64bit(msg, CLUSTERDEV_A_STATS_DROP_INVALID,
			      drops[CLUSTERDEV_DROP_INVALID], CLUSTERDEV_A_PAD) ||
	    nla_put_u64_64bit(msg, CLUSTERDEV_A_STATS_DROP_NOT_OWNED_ESTABLISHED,
			      drops[CLUSTERDEV_DROP_NOT_OWNED_ESTABLISHED], CLUSTERDEV_A_PAD) ||
	    nla_put_u64_64bit(msg, CLUSTERDEV_A_STATS_EARLY_NOT_OWNED,
			      drops[CLUSTERDEV_DROP_EARLY_NOT_OWNED], CLUSTERDEV_A_PAD) ||
	    nla_put_u64_64bit(msg, CLUSTERDEV_A_STATS_EARLY_SLOW_PATH,
			      drops[CLUSTERDEV_EARLY_SLOW_PATH], CLUSTERDEV_A_PAD) ||
	    nla_put_u64_64bit(msg, CLUSTERDEV_A_STATS_EARLY_UNDECIDED,
			      drops[CLUSTERDEV_EARLY_UNDECIDED], CLUSTERDEV_A_PAD))
		return -EMSGSIZE;
	return 0;
}

static u32 clusterdev_buckets(struct clusterdev_net *cn)
{
	u32 buckets;

	mutex_lock(&cn->cfg_lock);
	buckets = rcu_dereference_protected(cn->cfg, lockdep_is_held(&cn->cfg_lock))->buckets;
	mutex_unlock(&cn->cfg_lock);
	return buckets;
}

static int clusterdev_get_stats(struct sk_buff *skb, struct genl_info *info)
{
	struct clusterdev_net *cn = clusterdev_pernet(genl_info_net(info));
	/* Paired with smp_store_release in clusterdev_hook_net_enable. */
	const struct clusterdev_stats *st = smp_load_acquire(&cn->stats);
	u32 buckets = clusterdev_buckets(cn);
	struct sk_buff *msg;
	void *hdr;

	/* Two u64 arrays of at most 32 KiB each: within one attribute's u16
	 * length, but a large allocation; the dump below needs none.
	 */
	msg = genlmsg_new(NLMSG_DEFAULT_SIZE + 2 * buckets * sizeof(u64), GFP_KERNEL);
	if (!msg)
		return -ENOMEM;
	hdr = genlmsg_put_reply(msg, info, &clusterdev_genl_family, 0, CLUSTERDEV_CMD_GET_STATS);
	if (!hdr || clusterdev_put_arrays(msg, st, buckets) || clusterdev_put_drops(msg, st)) {
		nlmsg_free(msg);
		return -EMSGSIZE;
	}
	genlmsg_end(msg, hdr);
	return genlmsg_reply(msg, info);
}

/*
 * GET_STATS as a dump, in pages of the socket's size: first the bucket count
 * and the drop counters, then one nested attribute per bucket whose counters
 * are not both 0 (a node serves a third of the buckets or so; the rest
 * would be zeros). cb->args[0]: next bucket; cb->args[1]: first part sent.
 */
static int clusterdev_dump_stats(struct sk_buff *skb, struct netlink_callback *cb)
{
	struct clusterdev_net *cn = clusterdev_pernet(sock_net(skb->sk));
	/* Paired with smp_store_release in clusterdev_hook_net_enable. */
	const struct clusterdev_stats *st = smp_load_acquire(&cn->stats);
	u32 buckets = clusterdev_buckets(cn);
	u32 bucket = cb->args[0];
	u64 packets, conns;
	struct nlattr *nest;
	void *hdr;

	if (cb->args[1] && bucket >= buckets)
		return 0;
	hdr = genlmsg_put(skb, NETLINK_CB(cb->skb).portid, cb->nlh->nlmsg_seq,
			  &clusterdev_genl_family, NLM_F_MULTI, CLUSTERDEV_CMD_GET_STATS);
	if (!hdr)
		return -EMSGSIZE;
	if (!cb->args[1]) {
		if (nla_put_u32(skb, CLUSTERDEV_A_BUCKETS, buckets) ||
		    clusterdev_put_drops(skb, st)) {
			genlmsg_cancel(skb, hdr);
			return -EMSGSIZE;
		}
		cb->args[1] = 1;
	}
	for (; bucket < buckets; bucket++) {
		clusterdev_sum_bucket(st, bucket, &packets, &conns);
		if (!packets && !conns)
			continue;
		nest = nla_nest_start(skb, CLUSTERDEV_A_STATS_BUCKET);
		if (!nest)
			break;
		if (nla_put_u32(skb, CLUSTERDEV_BUCKET_A_INDEX, bucket) ||
		    nla_put_u64_64bit(skb, CLUSTERDEV_BUCKET_A_PACKETS, packets,
				      CLUSTERDEV_BUCKET_A_PAD) ||
		    nla_put_u64_64bit(skb, CLUSTERDEV_BUCKET_A_CONNS, conns,
				      CLUSTERDEV_BUCKET_A_PAD)) {
			nla_nest_cancel(skb, nest);
			break;
		}
		nla_nest_end(skb, nest);
	}
	cb->args[0] = bucket;
	genlmsg_end(skb, hdr);
	return skb->len;
}

/*
 * Every command needs CAP_NET_ADMIN in the user namespace that owns the
 * network namespace: the configuration holds the hash seed and the
 * ownership bitmap, enough to aim connections at one node, and the
 * counters tell which buckets a node serves.
 */
static const struct genl_small_ops clusterdev_genl_ops[] = {
	{
		.cmd = CLUSTERDEV_CMD_SET_CONFIG,
		.doit = clusterdev_set_config,
		.flags = GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd = CLUSTERDEV_CMD_GET_CONFIG,
		.doit = clusterdev_get_config,
		.flags = GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd = CLUSTERDEV_CMD_GET_STATS,
		.doit = clusterdev_get_stats,
		.dumpit = clusterdev_dump_stats,
		.flags = GENL_UNS_ADMIN_PERM,
	},
};

static struct genl_family clusterdev_genl_family __ro_after_init = {
	.name = CLUSTERDEV_GENL_NAME,
	.version = CLUSTERDEV_GENL_VERSION,
	.maxattr = CLUSTERDEV_A_MAX,
	.policy = clusterdev_policy,
	.netnsok = true,
	.module = THIS_MODULE,
	.small_ops = clusterdev_genl_ops,
	.n_small_ops = ARRAY_SIZE(clusterdev_genl_ops),
	.mcgrps = clusterdev_mcgrps,
	.n_mcgrps = ARRAY_SIZE(clusterdev_mcgrps),
	/* Every command is new: strict parsing, reserved header bytes must be 0. */
	.resv_start_op = CLUSTERDEV_CMD_SET_CONFIG,
};

int __init clusterdev_genl_init(void)
{
	return genl_register_family(&clusterdev_genl_family);
}

void clusterdev_genl_exit(void)
{
	genl_unregister_family(&clusterdev_genl_family);
}
