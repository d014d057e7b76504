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
#include <linux/icmpv6.h>
#include <linux/jhash.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <net/ipv6.h>
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
 * for bit; the guest tests compare both on real flows. The receive handler's
 * early decision (clusterdev_early.c) hashes the packet's own fields with it.
 */
u32 clusterdev_hash_ends(const __be32 *saddr, const __be32 *daddr, unsigned int naddr,
			 u16 sport, u16 dport, u8 proto, const struct clusterdev_cfg *cfg)
{
	bool ports = cfg->hash_fields == CLUSTERDEV_HASH_ADDRESSES_PORTS;
	struct clusterdev_end s = {}, d = {};
	const struct clusterdev_end *lo, *hi;
	unsigned int i, n = 0;
	u32 words[10];

	for (i = 0; i < naddr; i++) {
		s.addr[i] = ntohl(saddr[i]);
		d.addr[i] = ntohl(daddr[i]);
	}
	if (ports) {
		s.port = sport;
		d.port = dport;
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

static u32 clusterdev_bucket(const struct nf_conntrack_tuple *t, const struct clusterdev_cfg *cfg)
{
	unsigned int naddr = t->src.l3num == NFPROTO_IPV6 ? 4 : 1;
	u8 proto = t->dst.protonum;
	u16 sport, dport;

	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		/* An echo and its reply share the id but swap types. */
		sport = ntohs(t->src.u.icmp.id);
		dport = sport;
	} else {
		/* Zero for protocols without ports (conntrack's generic tracker). */
		sport = ntohs(t->src.u.all);
		dport = ntohs(t->dst.u.all);
	}
	return clusterdev_hash_ends(t->src.u3.all, t->dst.u3.all, naddr, sport, dport, proto, cfg);
}

/* Hooks run with BH off on the receive path: this CPU's counters are ours. */
static void clusterdev_count_bucket(const struct clusterdev_stats *st, u32 bucket, bool new_conn)
{
	struct clusterdev_pcpu_drops *d = this_cpu_ptr(st->drops);

	u64_stats_update_begin(&d->syncp);
	u64_stats_inc(this_cpu_ptr(st->packets) + bucket);
	if (new_conn)
		u64_stats_inc(this_cpu_ptr(st->conns) + bucket);
	u64_stats_update_end(&d->syncp);
}

static unsigned int clusterdev_drop(const struct clusterdev_stats *st,
				    enum clusterdev_drop_reason reason)
{
	clusterdev_count(st, reason);
	return NF_DROP;
}

/*
 * Untracked link-level control every node must see: multicast and
 * broadcast destinations, and the ICMPv6 messages conntrack itself never
 * tracks (neighbour discovery, MLD, router messages; everything but echo).
 */
static bool clusterdev_every_node(const struct nf_conntrack_tuple *t)
{
	if (t->src.l3num == NFPROTO_IPV4)
		return ipv4_is_multicast(t->dst.u3.ip) || ipv4_is_lbcast(t->dst.u3.ip);
	if (ipv6_addr_is_multicast(&t->dst.u3.in6))
		return true;
	return t->dst.protonum == IPPROTO_ICMPV6 &&
	       t->dst.u.icmp.type != ICMPV6_ECHO_REQUEST &&
	       t->dst.u.icmp.type != ICMPV6_ECHO_REPLY;
}

/*
 * An untracked packet (an operator's notrack rule): no conntrack entry to
 * remember a decision, so every packet is decided alone, by the bucket of
 * its own tuple (equal for both directions), like a NEW one. Passing them
 * all would make every node forward each of them.
 */
static unsigned int clusterdev_untracked(struct sk_buff *skb, const struct nf_hook_state *state,
					 const struct clusterdev_cfg *cfg,
					 const struct clusterdev_stats *st)
{
	struct nf_conntrack_tuple tuple;
	u32 bucket;

	if (!nf_ct_get_tuplepr(skb, skb_network_offset(skb), state->pf, state->net, &tuple))
		return clusterdev_drop(st, CLUSTERDEV_DROP_INVALID);
	if (clusterdev_every_node(&tuple))
		return NF_ACCEPT;
	bucket = clusterdev_bucket(&tuple, cfg);
	if (!test_bit(bucket, cfg->owned))
		return clusterdev_drop(st, CLUSTERDEV_DROP_NOT_OWNED);
	clusterdev_count_bucket(st, bucket, false);
	return NF_ACCEPT;
}

static unsigned int clusterdev_hook(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	const struct clusterdev_stats *st;
	const struct clusterdev_cfg *cfg;
	struct clusterdev_net *cn;
	enum ip_conntrack_info ctinfo;
	struct nf_conn *ct;
	u32 mark, stored, bucket;

	if (!state->in || state->in->rtnl_link_ops != &clusterdev_link_ops)
		return NF_ACCEPT;

	cn = clusterdev_pernet(state->net);
	/* Published before the hooks were registered, freed after they are gone. */
	st = READ_ONCE(cn->stats);
	/* Hooks run under rcu_read_lock. */
	cfg = rcu_dereference(cn->cfg);
	ct = nf_ct_get(skb, &ctinfo);
	if (!ct) {
		if (ctinfo == IP_CT_UNTRACKED)
			return clusterdev_untracked(skb, state, cfg, st);
		return clusterdev_drop(st, CLUSTERDEV_DROP_INVALID);
	}

	mark = READ_ONCE(ct->mark);
	stored = (mark & cfg->mark_mask) >> cfg->mark_shift;

	if (ctinfo != IP_CT_NEW) {
		/* Known connection, including RELATED ones: an expected
		 * connection (FTP data) starts with its master's mark, an ICMP
		 * error is counted to the connection it is about. Unclassified
		 * (not seen by the hook as NEW, e.g. older than the cluster):
		 * nobody else claims it, pass and leave the mark alone, as the
		 * nftables backend does. A mark naming no bucket of this
		 * configuration is owned by nobody.
		 */
		if (!stored)
			return NF_ACCEPT;
		if (stored > cfg->buckets || !test_bit(stored - 1, cfg->owned))
			return clusterdev_drop(st, CLUSTERDEV_DROP_NOT_OWNED_ESTABLISHED);
		clusterdev_count_bucket(st, stored - 1, false);
		return NF_ACCEPT;
	}

	/* NEW: an entry injected by the agent on takeover keeps its bucket. */
	if (stored >= 1 && stored <= cfg->buckets)
		bucket = stored - 1;
	else
		bucket = clusterdev_bucket(&ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple, cfg);

	if (!test_bit(bucket, cfg->owned))
		return clusterdev_drop(st, CLUSTERDEV_DROP_NOT_OWNED);

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
	clusterdev_count_bucket(st, bucket, !nf_ct_is_confirmed(ct));
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

static void clusterdev_stats_free(struct clusterdev_stats *st)
{
	if (!st)
		return;
	free_percpu(st->conns);
	free_percpu(st->packets);
	free_percpu(st->drops);
	kfree(st);
}

static struct clusterdev_stats *clusterdev_stats_alloc(void)
{
	const size_t size = CLUSTERDEV_MAX_BUCKETS * sizeof(u64_stats_t);
	struct clusterdev_stats *st;
	int cpu;

	st = kzalloc(sizeof(*st), GFP_KERNEL);
	if (!st)
		return NULL;
	st->drops = alloc_percpu(struct clusterdev_pcpu_drops);
	st->packets = __alloc_percpu(size, __alignof__(u64_stats_t));
	st->conns = __alloc_percpu(size, __alignof__(u64_stats_t));
	if (!st->drops || !st->packets || !st->conns) {
		clusterdev_stats_free(st);
		return NULL;
	}
	for_each_possible_cpu(cpu)
		u64_stats_init(&per_cpu_ptr(st->drops, cpu)->syncp);
	return st;
}

/*
 * With the first clusterdev link of a namespace (RTNL held): its counters,
 * then its hooks. Namespaces without a link have neither.
 */
int clusterdev_hook_net_enable(struct net *net)
{
	struct clusterdev_net *cn = clusterdev_pernet(net);
	struct clusterdev_stats *st;
	int err;

	ASSERT_RTNL();
	if (cn->hooks_registered)
		return 0;
	if (!cn->stats) {
		st = clusterdev_stats_alloc();
		if (!st)
			return -ENOMEM;
		/* Paired with READ_ONCE in the hook and GET_STATS; the hook
		 * registration below publishes it to packets as well.
		 */
		smp_store_release(&cn->stats, st);
	}
	err = nf_register_net_hooks(net, clusterdev_hook_ops, ARRAY_SIZE(clusterdev_hook_ops));
	if (err)
		return err;
	cn->hooks_registered = true;
	return 0;
}

/* Namespace exit: its links are gone, no new packet reaches the hooks. */
void clusterdev_hook_net_exit(struct net *net)
{
	struct clusterdev_net *cn = clusterdev_pernet(net);

	if (!cn->stats)
		return;		/* never had a link: no hooks, nothing to wait for */
	if (cn->hooks_registered) {
		nf_unregister_net_hooks(net, clusterdev_hook_ops, ARRAY_SIZE(clusterdev_hook_ops));
		cn->hooks_registered = false;
	}
	/* A hook that started before the unregistration may still read the
	 * configuration and the counters: wait for it before they are freed.
	 */
	synchronize_net();
	clusterdev_stats_free(cn->stats);
	cn->stats = NULL;
}
