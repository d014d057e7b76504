// SPDX-License-Identifier: GPL-2.0-only
/*
 * clusterdev: the packet filter. A netfilter hook right after conntrack in
 * PRE_ROUTING, on packets received by a clusterdev link only, with the same
 * rules as the nftables backend (agent/.../dataplane/nft_ruleset.py):
 *   - known connection (ESTABLISHED, RELATED, reply): pass if its conntrack
 *     mark is unclassified (0 under the mask) or records a bucket owned by
 *     this node; otherwise drop (drop_not_owned_established). Every node
 *     sees every frame, and during a handover both the giver and the taker
 *     hold the connection's entry: the owner alone forwards it;
 *   - NEW connection: pass only if its bucket is owned by this node;
 *   - INVALID (conntrack found no state, e.g. mid-stream TCP on a node that
 *     never saw the handshake): drop, another node forwards it.
 * The bucket goes into the conntrack mark as bucket + 1 under the mark mask,
 * so the agent reads ownership from conntrack as with the nftables backend.
 */
#include <linux/jhash.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6.h>
#include <net/netfilter/nf_conntrack.h>
#include <net/netfilter/nf_conntrack_ecache.h>

#include "clusterdev.h"

#ifndef CONFIG_NF_CONNTRACK_MARK
#error "clusterdev records buckets in the conntrack mark: CONFIG_NF_CONNTRACK_MARK is required"
#endif

/* One endpoint of a connection in host order, for canonical ordering. */
struct clusterdev_end {
	u32 addr[4];
	u16 port;
};

static int clusterdev_end_cmp(const struct clusterdev_end *a, const struct clusterdev_end *b,
			      unsigned int naddr, bool ports)
{
	unsigned int i;

	for (i = 0; i < naddr; i++)
		if (a->addr[i] != b->addr[i])
			return a->addr[i] < b->addr[i] ? -1 : 1;
	if (ports && a->port != b->port)
		return a->port < b->port ? -1 : 1;
	return 0;
}

/*
 * The connection's bucket, equal for both directions and on every node: the
 * two endpoints are ordered (lower address, then lower port, first) before
 * hashing, and the seed comes from the agent, never from a per-boot random
 * key. The agent's Python twin (dataplane/clusterdev_hash.py) must agree bit
 * for bit; the guest tests compare both on real flows.
 */
static u32 clusterdev_bucket(const struct nf_conntrack_tuple *t, const struct clusterdev_cfg *cfg)
{
	bool ports = cfg->hash_fields == CLUSTERDEV_HASH_ADDRESSES_PORTS;
	struct clusterdev_end s = {}, d = {};
	const struct clusterdev_end *lo, *hi;
	unsigned int naddr, i, n = 0;
	u32 words[10];
	u8 proto = t->dst.protonum;

	naddr = t->src.l3num == NFPROTO_IPV6 ? 4 : 1;
	for (i = 0; i < naddr; i++) {
		s.addr[i] = ntohl(t->src.u3.all[i]);
		d.addr[i] = ntohl(t->dst.u3.all[i]);
	}
	if (ports) {
		if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
			/* An echo and its reply share the id but swap types. */
			s.port = ntohs(t->src.u.icmp.id);
			d.port = s.port;
		} else {
			/* Zero for protocols without ports (conntrack's generic tracker). */
			s.port = ntohs(t->src.u.all);
			d.port = ntohs(t->dst.u.all);
		}
	}
	if (clusterdev_end_cmp(&s, &d, naddr, ports) <= 0) {
		lo = &s;
		hi = &d;
	} else {
		lo = &d;
		hi = &s;
	}
	for (i = 0; i < naddr; i++)
		words[n++] = lo->addr[i];
	for (i = 0; i < naddr; i++)
		words[n++] = hi->addr[i];
	if (ports) {
		words[n++] = (u32)lo->port << 16 | hi->port;
		words[n++] = proto;
	}
	return reciprocal_scale(jhash2(words, n, cfg->seed), cfg->buckets);
}

static unsigned int clusterdev_hook(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	struct clusterdev_net *cn;
	const struct clusterdev_cfg *cfg;
	enum ip_conntrack_info ctinfo;
	struct nf_conn *ct;
	u32 mark, stored, bucket;

	if (!state->in || state->in->rtnl_link_ops != &clusterdev_link_ops)
		return NF_ACCEPT;

	cn = clusterdev_pernet(state->net);
	ct = nf_ct_get(skb, &ctinfo);
	if (!ct) {
		if (ctinfo == IP_CT_UNTRACKED)
			return NF_ACCEPT;
		atomic64_inc(&cn->drop_invalid);
		return NF_DROP;
	}

	/* Hooks run under rcu_read_lock. */
	cfg = rcu_dereference(cn->cfg);
	mark = READ_ONCE(ct->mark);
	stored = (mark & cfg->mark_mask) >> cfg->mark_shift;

	if (ctinfo != IP_CT_NEW) {
		/* Known connection. Unclassified (not seen by the hook as NEW,
		 * e.g. older than the cluster): nobody else claims it, pass and
		 * leave the mark alone, as the nftables backend does. A mark
		 * naming no bucket of this configuration is owned by nobody.
		 */
		if (!stored)
			return NF_ACCEPT;
		if (stored > cfg->buckets || !test_bit(stored - 1, cfg->owned)) {
			atomic64_inc(&cn->drop_not_owned_established);
			return NF_DROP;
		}
		atomic64_inc(&cn->packets[stored - 1]);
		return NF_ACCEPT;
	}

	/* NEW: an entry injected by the agent on takeover keeps its bucket. */
	if (stored >= 1 && stored <= cfg->buckets)
		bucket = stored - 1;
	else
		bucket = clusterdev_bucket(&ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple, cfg);

	if (!test_bit(bucket, cfg->owned)) {
		atomic64_inc(&cn->drop_not_owned);
		return NF_DROP;
	}

	if (stored != bucket + 1) {
		WRITE_ONCE(ct->mark, (mark & ~cfg->mark_mask) |
				     ((bucket + 1) << cfg->mark_shift));
		/* An entry that is already in the table (a repeated SYN of an
		 * injected entry without a mark) changes visibly: tell
		 * conntrack listeners.
		 */
		if (nf_ct_is_confirmed(ct))
			nf_conntrack_event_cache(IPCT_MARK, ct);
	}
	if (!nf_ct_is_confirmed(ct))
		atomic64_inc(&cn->conns[bucket]);
	atomic64_inc(&cn->packets[bucket]);
	return NF_ACCEPT;
}

/* After conntrack (-200) so the state is known, before DNAT (-100) so the
 * hash sees the addresses every node saw.
 */
static const struct nf_hook_ops clusterdev_hook_ops[] = {
	{
		.hook = clusterdev_hook,
		.pf = NFPROTO_IPV4,
		.hooknum = NF_INET_PRE_ROUTING,
		.priority = NF_IP_PRI_CONNTRACK + 1,
	},
	{
		.hook = clusterdev_hook,
		.pf = NFPROTO_IPV6,
		.hooknum = NF_INET_PRE_ROUTING,
		.priority = NF_IP6_PRI_CONNTRACK + 1,
	},
};

int clusterdev_hook_net_init(struct net *net)
{
	return nf_register_net_hooks(net, clusterdev_hook_ops, ARRAY_SIZE(clusterdev_hook_ops));
}

void clusterdev_hook_net_exit(struct net *net)
{
	nf_unregister_net_hooks(net, clusterdev_hook_ops, ARRAY_SIZE(clusterdev_hook_ops));
}
