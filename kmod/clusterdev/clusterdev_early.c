// SPDX-License-Identifier: GPL-2.0-only
/*
 * clusterdev: the early decision. The receive handler calls this for a frame
 * sent to the cluster MAC, before the frame reaches the IP stack (no
 * defragmentation, no conntrack lookup or allocation yet). With early_drop
 * on, it drops the packets that the hook (clusterdev_hook.c) would provably
 * drop as not owned, and passes everything else on unchanged. The rules are
 * the nftables backend's early chain (agent/.../dataplane/early_drop.py):
 *
 * A packet is dropped early only if all of these hold:
 *   - IPv4 not fragmented, or IPv6 with the transport header right after the
 *     fixed header (no extension headers to walk);
 *   - TCP, UDP, or SCTP, DCCP, UDP-Lite where this kernel's conntrack tracks
 *     their ports (otherwise the hook hashes the generic tracker's zero
 *     ports), or an ICMP/ICMPv6 echo request or reply;
 *   - the destination is not a local address (replies to SNAT/masquerade to
 *     a cluster IP, the node's own connections, services on the cluster IPs
 *     are decided after conntrack, where the translated tuple is known);
 *   - no slow path entry matches its source or destination (DNAT targets,
 *     helpers' servers, SNAT pools that are not local: the operator's list);
 *   - the bucket of its own fields is not owned.
 * Why that is the hook's own decision: the hash is the hook's (same function,
 * canonical endpoint order, so both directions hash alike, with no zones to
 * orient as nftables needs); a NEW packet's bucket is that hash; a known
 * connection of a plain (not translated, not related) flow carries that hash
 * in its mark, written from its first packet; an INVALID one is dropped by
 * the hook anyway; the owned bitmap is the same RCU-published configuration
 * the hook reads. What is translated or related is on the slow path by the
 * local-address test or the operator's list.
 */
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/skbuff.h>
#include <net/addrconf.h>
#include <net/ip.h>
#include <net/route.h>

#include "clusterdev.h"

/* What the hash needs of a packet, as it arrives. */
struct clusterdev_pkt {
	const __be32 *saddr;
	const __be32 *daddr;
	unsigned int naddr;	/* 32-bit words per address */
	u8 family;
	u8 proto;
	u16 sport;		/* host order; ICMP echo: the id, both sides */
	u16 dport;
};

/*
 * The protocols whose conntrack tuple holds the packet's ports. A protocol
 * whose tracker this kernel lacks (Debian's 7.3 has none for DCCP and
 * UDP-Lite) is tracked with ports 0 and would hash differently in the hook:
 * never decided early.
 */
static bool clusterdev_port_proto(u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return true;
#if IS_ENABLED(CONFIG_NF_CT_PROTO_SCTP)
	case IPPROTO_SCTP:
		return true;
#endif
#if IS_ENABLED(CONFIG_NF_CT_PROTO_DCCP)
	case IPPROTO_DCCP:
		return true;
#endif
#if IS_ENABLED(CONFIG_NF_CT_PROTO_UDPLITE)
	case IPPROTO_UDPLITE:
		return true;
#endif
	}
	return false;
}

/* A big-endian u16 at any alignment (linux/unaligned.h is 6.12+ only). */
static u16 clusterdev_be16_at(const u8 *p)
{
	return (u16)p[0] << 8 | p[1];
}

/* Ports (or the echo id) from the transport header at `off`; false: not decidable. */
static bool clusterdev_parse_l4(struct sk_buff *skb, unsigned int off, struct clusterdev_pkt *p)
{
	const u8 *l4;

	/* 8 bytes: ports of every port protocol; type, code, id of an echo. */
	if (!pskb_may_pull(skb, off + 8))
		return false;
	l4 = skb_network_header(skb) + off;
	if (clusterdev_port_proto(p->proto)) {
		p->sport = clusterdev_be16_at(l4);
		p->dport = clusterdev_be16_at(l4 + 2);
		return true;
	}
	if ((p->proto == IPPROTO_ICMP && (l4[0] == ICMP_ECHO || l4[0] == ICMP_ECHOREPLY)) ||
	    (p->proto == IPPROTO_ICMPV6 &&
	     (l4[0] == ICMPV6_ECHO_REQUEST || l4[0] == ICMPV6_ECHO_REPLY))) {
		p->sport = clusterdev_be16_at(l4 + 4);
		p->dport = p->sport;
		return true;
	}
	return false;
}

static bool clusterdev_parse4(struct sk_buff *skb, struct net_device *dev,
			      struct clusterdev_pkt *p)
{
	const struct iphdr *iph;
	unsigned int hl;

	if (!pskb_may_pull(skb, sizeof(*iph)))
		return false;
	iph = ip_hdr(skb);
	/* Fragments: only the first has ports; the hook sees them reassembled. */
	if (iph->version != 4 || iph->ihl < 5 || ip_is_fragment(iph))
		return false;
	hl = iph->ihl * 4;
	p->family = NFPROTO_IPV4;
	p->proto = iph->protocol;
	p->naddr = 1;
	if (!clusterdev_parse_l4(skb, hl, p))
		return false;
	iph = ip_hdr(skb);	/* the pull may have moved the header */
	p->saddr = &iph->saddr;
	p->daddr = &iph->daddr;
	/* A local destination (RTN_LOCAL, broadcast): decided after conntrack. */
	return inet_addr_type_dev_table(dev_net(dev), dev, iph->daddr) == RTN_UNICAST;
}

static bool clusterdev_parse6(struct sk_buff *skb, struct net_device *dev,
			      struct clusterdev_pkt *p)
{
#if IS_ENABLED(CONFIG_IPV6)
	const struct ipv6hdr *ip6;

	if (!pskb_may_pull(skb, sizeof(*ip6)))
		return false;
	ip6 = ipv6_hdr(skb);
	/* Extension headers (fragments among them) are not walked here. */
	p->family = NFPROTO_IPV6;
	p->proto = ip6->nexthdr;
	p->naddr = 4;
	if (ip6->version != 6 || !clusterdev_parse_l4(skb, sizeof(*ip6), p))
		return false;
	ip6 = ipv6_hdr(skb);
	p->saddr = ip6->saddr.s6_addr32;
	p->daddr = ip6->daddr.s6_addr32;
	return !ipv6_chk_addr(dev_net(dev), &ip6->daddr, NULL, 0);
#else
	return false;
#endif
}

/* One side (source or destination) of the packet against one entry. */
static bool clusterdev_slow_side(const struct clusterdev_slow *e, const struct clusterdev_pkt *p,
				 const __be32 *addr, u16 port)
{
	unsigned int i;

	if (e->proto && e->proto != p->proto)
		return false;
	if (port < e->port_min || port > e->port_max)
		return false;
	if (!e->family)
		return true;
	if (e->family != p->family)
		return false;
	for (i = 0; i < p->naddr; i++)
		if ((addr[i] & e->mask[i]) != e->addr[i])
			return false;
	return true;
}

static bool clusterdev_slow_path(const struct clusterdev_cfg *cfg, const struct clusterdev_pkt *p)
{
	unsigned int i;

	for (i = 0; i < cfg->n_slow; i++)
		if (clusterdev_slow_side(&cfg->slow[i], p, p->saddr, p->sport) ||
		    clusterdev_slow_side(&cfg->slow[i], p, p->daddr, p->dport))
			return true;
	return false;
}

/*
 * True: drop the frame, it is provably another node's (counted as
 * early_not_owned). Called under rcu_read_lock with BH off (receive path),
 * on our own copy of the skb, for frames to the cluster MAC that are not
 * IP multicast.
 */
bool clusterdev_early_foreign(struct sk_buff *skb, struct net_device *dev)
{
	struct clusterdev_net *cn = clusterdev_pernet(dev_net(dev));
	const struct clusterdev_cfg *cfg = rcu_dereference(cn->cfg);
	enum clusterdev_drop_reason what;
	struct clusterdev_pkt p;
	bool decidable;
	u32 bucket;

	if (!cfg->early_drop)
		return false;
	if (skb->protocol == htons(ETH_P_IP))
		decidable = clusterdev_parse4(skb, dev, &p);
	else if (skb->protocol == htons(ETH_P_IPV6))
		decidable = clusterdev_parse6(skb, dev, &p);
	else
		return false;	/* not IP: nothing for the hook either */

	if (!decidable) {
		what = CLUSTERDEV_EARLY_UNDECIDED;
	} else if (clusterdev_slow_path(cfg, &p)) {
		what = CLUSTERDEV_EARLY_SLOW_PATH;
	} else {
		bucket = clusterdev_hash_ends(p.saddr, p.daddr, p.naddr, p.sport, p.dport,
					      p.proto, cfg);
		if (test_bit(bucket, cfg->owned))
			return false;	/* ours: the hook decides and counts it */
		what = CLUSTERDEV_DROP_EARLY_NOT_OWNED;
	}
	/* The link exists, so the namespace's counters do (set up before it). */
	clusterdev_count(READ_ONCE(cn->stats), what);
	return what == CLUSTERDEV_DROP_EARLY_NOT_OWNED;
}
