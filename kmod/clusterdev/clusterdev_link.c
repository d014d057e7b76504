// SPDX-License-Identifier: GPL-2.0-only
/*
 * clusterdev: the link type.
 *   ip link add cl0 link eth0 address 01:00:5e:7f:00:01 type clusterdev
 * cl0 holds the cluster IP addresses; its own hardware address is the
 * cluster's multicast MAC, so the kernel's ARP code on cl0 answers requests
 * for the cluster IPs with that MAC (and puts it as sender hardware address
 * in cl0's own requests) without any rewriting.
 *
 * Receive path: an rx_handler on the lower device (as macvlan does), which
 * moves to cl0 the frames sent to the cluster MAC, the ARP requests for
 * cl0's addresses and the IPv6 neighbour solicitations for them; everything
 * else stays on the lower device, so the node's own address and the cluster
 * sync traffic there are not filtered. The price: one clusterdev per lower
 * device, and the lower device cannot be a bridge port or macvlan lower at
 * the same time (one rx_handler per device).
 *
 * Transmit path: frames leave through the lower device with the lower
 * device's unicast MAC as Ethernet source.
 *
 * As a stacked device (like macvlan and ipvlan) cl0 passes its address
 * lists (e.g. the IPv6 solicited-node groups of the cluster addresses) to
 * the lower device's hardware filter, inherits its offloads and GSO limits,
 * and keeps its MTU within and in step with the lower device's.
 */
#include <linux/etherdevice.h>
#include <linux/if_arp.h>
#include <linux/if_vlan.h>
#include <linux/inetdevice.h>
#include <linux/netdevice.h>
#include <linux/version.h>
#include <net/addrconf.h>
#include <net/ipv6.h>
#include <net/ndisc.h>
#include <net/netfilter/nf_conntrack.h>

#include "clusterdev.h"

struct clusterdev_priv {
	struct net_device *dev;
	struct net_device *lower;
	netdevice_tracker lower_tracker;
};

/* What cl0 may take over from its lower device (the rest stays off). */
#define CLUSTERDEV_FEATURES \
	(NETIF_F_SG | NETIF_F_CSUM_MASK | NETIF_F_FRAGLIST | NETIF_F_GSO_SOFTWARE | \
	 NETIF_F_GSO_ROBUST | NETIF_F_RXCSUM)

/* An ARP request (still on the lower device) asking for one of cl0's addresses. */
static bool clusterdev_arp_for_us(struct sk_buff *skb, struct net_device *dev)
{
	const struct arphdr *arp;
	const struct in_ifaddr *ifa;
	struct in_device *in_dev;
	__be32 tip;

	if (skb->protocol != htons(ETH_P_ARP) ||
	    !pskb_may_pull(skb, sizeof(*arp) + 2 * (ETH_ALEN + sizeof(tip))))
		return false;
	arp = arp_hdr(skb);
	if (arp->ar_hrd != htons(ARPHRD_ETHER) || arp->ar_pro != htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != sizeof(tip) ||
	    arp->ar_op != htons(ARPOP_REQUEST))
		return false;
	memcpy(&tip, (const u8 *)(arp + 1) + 2 * ETH_ALEN + sizeof(tip), sizeof(tip));

	in_dev = __in_dev_get_rcu(dev);
	if (!in_dev)
		return false;
	in_dev_for_each_ifa_rcu(ifa, in_dev)
		if (ifa->ifa_local == tip)
			return true;
	return false;
}

/*
 * An IPv6 neighbour solicitation (still on the lower device) asking for one
 * of cl0's addresses. It is sent to the target's solicited-node multicast
 * group, which only cl0 joined; moved to cl0, the kernel's own ndisc code
 * there answers with cl0's hardware address, the cluster MAC: the IPv6 twin
 * of ARP. Only multicast frames get here (unicast ones to the cluster MAC are
 * moved anyway), so ordinary IPv6 traffic of the lower device pays one
 * comparison.
 */
static bool clusterdev_ns_for_us(struct sk_buff *skb, struct net_device *dev)
{
#if IS_ENABLED(CONFIG_IPV6)
	const struct ipv6hdr *ip6;
	const struct nd_msg *msg;

	if (skb->protocol != htons(ETH_P_IPV6) || skb->pkt_type != PACKET_MULTICAST ||
	    !pskb_may_pull(skb, sizeof(*ip6) + sizeof(*msg)))
		return false;
	ip6 = ipv6_hdr(skb);
	/* No extension headers: what Linux and RFC 4861 senders emit. */
	if (ip6->nexthdr != IPPROTO_ICMPV6 || ip6->hop_limit != 255)
		return false;
	msg = (const struct nd_msg *)(ip6 + 1);
	if (msg->icmph.icmp6_type != NDISC_NEIGHBOUR_SOLICITATION || msg->icmph.icmp6_code)
		return false;
	return ipv6_chk_addr(dev_net(dev), &msg->target, dev, 1);
#else
	return false;
#endif
}

/*
 * An MLD query (general, or for one of cl0's groups) on the lower device.
 * cl0 must answer it for the groups it joined (the solicited-node groups of
 * the cluster IPv6 addresses), or a snooping switch forgets them and stops
 * sending neighbour solicitations for the cluster addresses to this node.
 * MLD messages carry a hop-by-hop header (router alert) before ICMPv6.
 */
static bool clusterdev_is_mld_query(struct sk_buff *skb)
{
#if IS_ENABLED(CONFIG_IPV6)
	const struct ipv6_opt_hdr *hop;
	const struct icmp6hdr *icmp;
	unsigned int off = sizeof(struct ipv6hdr);

	if (skb->protocol != htons(ETH_P_IPV6) || skb->pkt_type != PACKET_MULTICAST ||
	    !pskb_may_pull(skb, off + sizeof(*hop)) || ipv6_hdr(skb)->nexthdr != NEXTHDR_HOP)
		return false;
	hop = (const struct ipv6_opt_hdr *)(skb->data + off);
	if (hop->nexthdr != IPPROTO_ICMPV6)
		return false;
	off += ipv6_optlen(hop);
	if (!pskb_may_pull(skb, off + sizeof(*icmp)))
		return false;
	icmp = (const struct icmp6hdr *)(skb->data + off);
	return icmp->icmp6_type == ICMPV6_MGM_QUERY;
#else
	return false;
#endif
}

/* A copy for cl0; the lower device keeps the original for its own groups. */
static void clusterdev_copy_to_upper(struct sk_buff *skb, struct net_device *dev)
{
	struct sk_buff *nskb = skb_clone(skb, GFP_ATOMIC);

	if (!nskb) {
		DEV_STATS_INC(dev, rx_dropped);
		return;
	}
	nskb->dev = dev;
	DEV_STATS_INC(dev, rx_packets);
	DEV_STATS_ADD(dev, rx_bytes, nskb->len);
	netif_rx(nskb);
}

/*
 * Real IP multicast whose group maps to the cluster MAC (e.g. 224.0.0.193
 * for 01:00:5e:00:00:c1) is not cluster traffic: it stays on the lower
 * device, as PACKET_MULTICAST. xt_cluster checks the address the same way.
 */
static bool clusterdev_ip_multicast(struct sk_buff *skb)
{
	if (skb->protocol == htons(ETH_P_IP))
		return pskb_may_pull(skb, sizeof(struct iphdr)) &&
		       ipv4_is_multicast(ip_hdr(skb)->daddr);
#if IS_ENABLED(CONFIG_IPV6)
	if (skb->protocol == htons(ETH_P_IPV6))
		return pskb_may_pull(skb, sizeof(struct ipv6hdr)) &&
		       ipv6_addr_is_multicast(&ipv6_hdr(skb)->daddr);
#endif
	return false;
}

static rx_handler_result_t clusterdev_handle_frame(struct sk_buff **pskb)
{
	struct sk_buff *skb = *pskb;
	struct clusterdev_priv *priv = rcu_dereference(skb->dev->rx_handler_data);
	struct net_device *dev = priv->dev;
	bool to_cluster_mac;

	if (!netif_running(dev) || skb->pkt_type == PACKET_LOOPBACK)
		return RX_HANDLER_PASS;
	/* A tag still here names a VLAN no VLAN device claimed (the core
	 * offers tagged frames to VLAN devices before rx handlers): not ours.
	 * Priority tags (VLAN 0) are ordinary frames.
	 */
	if (skb_vlan_tag_present(skb) && skb_vlan_tag_get_id(skb))
		return RX_HANDLER_PASS;
	to_cluster_mac = ether_addr_equal(eth_hdr(skb)->h_dest, dev->dev_addr);
	if (!to_cluster_mac && skb->protocol != htons(ETH_P_ARP) &&
	    (skb->protocol != htons(ETH_P_IPV6) || skb->pkt_type != PACKET_MULTICAST))
		return RX_HANDLER_PASS;

	/* Pulling headers or changing the skb needs our own copy. */
	skb = skb_share_check(skb, GFP_ATOMIC);
	if (!skb) {
		DEV_STATS_INC(dev, rx_dropped);
		return RX_HANDLER_CONSUMED;
	}
	*pskb = skb;
	if (to_cluster_mac && clusterdev_ip_multicast(skb))
		return RX_HANDLER_PASS;
	/* Another node's packet, provably (clusterdev_early.c): drop it before
	 * the IP stack defragments, looks it up in conntrack or allocates an
	 * entry for it. Off unless the agent turned early_drop on.
	 */
	if (to_cluster_mac && clusterdev_early_foreign(skb, dev)) {
		kfree_skb(skb);
		return RX_HANDLER_CONSUMED;
	}
	if (!to_cluster_mac && !clusterdev_arp_for_us(skb, dev) &&
	    !clusterdev_ns_for_us(skb, dev)) {
		if (clusterdev_is_mld_query(skb))
			clusterdev_copy_to_upper(skb, dev);
		return RX_HANDLER_PASS;
	}

	/*
	 * eth_type_trans() classed a frame to the cluster MAC as
	 * PACKET_MULTICAST; IPv4 forwarding drops anything not PACKET_HOST
	 * ("not for us" at link level). Every node gets the frame on purpose
	 * and the netfilter hook picks exactly one to handle the connection,
	 * so the frame is ours: say so, as xt_cluster's users had to.
	 */
	if (to_cluster_mac)
		skb->pkt_type = PACKET_HOST;
	skb->dev = dev;
	DEV_STATS_INC(dev, rx_packets);
	DEV_STATS_ADD(dev, rx_bytes, skb->len);
	return RX_HANDLER_ANOTHER;
}

static netdev_tx_t clusterdev_xmit(struct sk_buff *skb, struct net_device *dev)
{
	struct clusterdev_priv *priv = netdev_priv(dev);
	unsigned int len = skb->len;
	int ret;

	/*
	 * The header was built with cl0's address, the multicast MAC, as
	 * source. Bridges and switches drop frames from a multicast source,
	 * so the lower device's unicast MAC goes there instead. ARP payloads
	 * keep the cluster MAC as sender hardware address.
	 */
	if (!pskb_may_pull(skb, ETH_HLEN) || skb_cow_head(skb, 0)) {
		DEV_STATS_INC(dev, tx_dropped);
		kfree_skb(skb);
		return NETDEV_TX_OK;
	}
	ether_addr_copy(((struct ethhdr *)skb->data)->h_source, priv->lower->dev_addr);
	skb->dev = priv->lower;
	ret = dev_queue_xmit(skb);
	/* Congestion (NET_XMIT_CN) still sent this packet: not a drop.
	 * (net_xmit_eval() is a macro that evaluates its argument twice.)
	 */
	if (ret == NET_XMIT_SUCCESS || ret == NET_XMIT_CN) {
		DEV_STATS_INC(dev, tx_packets);
		DEV_STATS_ADD(dev, tx_bytes, len);
	} else {
		DEV_STATS_INC(dev, tx_dropped);
	}
	return NETDEV_TX_OK;
}

/* Make the lower device deliver frames sent to the cluster MAC. */
static int clusterdev_open(struct net_device *dev)
{
	struct clusterdev_priv *priv = netdev_priv(dev);
	int err;

	err = dev_mc_add(priv->lower, dev->dev_addr);
	if (err)
		return err;
	if (dev->flags & IFF_ALLMULTI) {
		err = dev_set_allmulti(priv->lower, 1);
		if (err)
			goto err_mc;
	}
	if (dev->flags & IFF_PROMISC) {
		err = dev_set_promiscuity(priv->lower, 1);
		if (err)
			goto err_allmulti;
	}
	return 0;

err_allmulti:
	if (dev->flags & IFF_ALLMULTI)
		dev_set_allmulti(priv->lower, -1);
err_mc:
	dev_mc_del(priv->lower, dev->dev_addr);
	return err;
}

static int clusterdev_stop(struct net_device *dev)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	dev_uc_unsync(priv->lower, dev);
	dev_mc_unsync(priv->lower, dev);
	if (dev->flags & IFF_ALLMULTI)
		dev_set_allmulti(priv->lower, -1);
	if (dev->flags & IFF_PROMISC)
		dev_set_promiscuity(priv->lower, -1);
	dev_mc_del(priv->lower, dev->dev_addr);
	return 0;
}

static void clusterdev_change_rx_flags(struct net_device *dev, int change)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	if (!(dev->flags & IFF_UP))
		return;
	if (change & IFF_ALLMULTI)
		dev_set_allmulti(priv->lower, dev->flags & IFF_ALLMULTI ? 1 : -1);
	if (change & IFF_PROMISC)
		dev_set_promiscuity(priv->lower, dev->flags & IFF_PROMISC ? 1 : -1);
}

/*
 * cl0's own address lists (the IPv6 solicited-node groups of the cluster
 * addresses, other groups joined on cl0) go into the lower device's: a real
 * NIC filters in hardware what nobody asked for.
 */
static void clusterdev_set_rx_mode(struct net_device *dev)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	dev_uc_sync(priv->lower, dev);
	dev_mc_sync(priv->lower, dev);
}

static int clusterdev_change_mtu(struct net_device *dev, int new_mtu)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	if (new_mtu > READ_ONCE(priv->lower->mtu))
		return -EINVAL;
	WRITE_ONCE(dev->mtu, new_mtu);
	return 0;
}

/* Offloads, GSO limits and header room as the lower device has them. */
static void clusterdev_inherit(struct net_device *dev, const struct net_device *lower)
{
	dev->hard_header_len = lower->hard_header_len;
	dev->needed_headroom = lower->needed_headroom;
	dev->needed_tailroom = lower->needed_tailroom;
	netif_inherit_tso_max(dev, lower);
	/* No bigger GSO packets than the lower device takes whole. */
	WRITE_ONCE(dev->gso_max_size, READ_ONCE(lower->gso_max_size));
	WRITE_ONCE(dev->gso_max_segs, READ_ONCE(lower->gso_max_segs));
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	WRITE_ONCE(dev->gso_ipv4_max_size, READ_ONCE(lower->gso_ipv4_max_size));
#endif
}

static netdev_features_t clusterdev_fix_features(struct net_device *dev,
						 netdev_features_t features)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	/* Only what the lower device does itself; the rest is left as it is. */
	return features & (priv->lower->features | ~CLUSTERDEV_FEATURES);
}

static int clusterdev_init(struct net_device *dev)
{
	struct clusterdev_priv *priv = netdev_priv(dev);
	struct net_device *lower = priv->lower;

	dev->features |= lower->features & CLUSTERDEV_FEATURES;
	dev->hw_features |= CLUSTERDEV_FEATURES;
	dev->vlan_features = lower->vlan_features & CLUSTERDEV_FEATURES;
	dev->hw_enc_features |= dev->features;
	clusterdev_inherit(dev, lower);
	netdev_hold(lower, &priv->lower_tracker, GFP_KERNEL);
	return 0;
}

static void clusterdev_uninit(struct net_device *dev)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	netdev_put(priv->lower, &priv->lower_tracker);
}

static int clusterdev_set_mac_address(struct net_device *dev, void *p)
{
	struct clusterdev_priv *priv = netdev_priv(dev);
	const struct sockaddr *addr = p;
	int err;

	if (!is_multicast_ether_addr(addr->sa_data) || is_broadcast_ether_addr(addr->sa_data))
		return -EADDRNOTAVAIL;
	if (netif_running(dev)) {
		err = dev_mc_add(priv->lower, addr->sa_data);
		if (err)
			return err;
		dev_mc_del(priv->lower, dev->dev_addr);
	}
	eth_hw_addr_set(dev, addr->sa_data);
	return 0;
}

static int clusterdev_get_iflink(const struct net_device *dev)
{
	const struct clusterdev_priv *priv = netdev_priv(dev);

	return READ_ONCE(priv->lower->ifindex);
}

static const struct net_device_ops clusterdev_netdev_ops = {
	.ndo_init = clusterdev_init,
	.ndo_uninit = clusterdev_uninit,
	.ndo_open = clusterdev_open,
	.ndo_stop = clusterdev_stop,
	.ndo_start_xmit = clusterdev_xmit,
	.ndo_change_rx_flags = clusterdev_change_rx_flags,
	.ndo_set_rx_mode = clusterdev_set_rx_mode,
	.ndo_change_mtu = clusterdev_change_mtu,
	.ndo_fix_features = clusterdev_fix_features,
	.ndo_set_mac_address = clusterdev_set_mac_address,
	.ndo_get_iflink = clusterdev_get_iflink,
	/* No ndo_validate_addr: a multicast hardware address is the point. */
};

static void clusterdev_setup(struct net_device *dev)
{
	ether_setup(dev);
	dev->netdev_ops = &clusterdev_netdev_ops;
	dev->needs_free_netdev = true;
	dev->priv_flags |= IFF_NO_QUEUE;
	dev->priv_flags &= ~IFF_TX_SKB_SHARING;
	/* Bounded by the lower device's MTU (clusterdev_change_mtu). */
	dev->max_mtu = ETH_MAX_MTU;
	/* Lockless transmit: the lower device takes its own lock. The
	 * per-netns conntrack reference taken in newlink must stay in its netns.
	 */
#if defined(CLUSTERDEV_NETNS_IMMUTABLE)	/* see Kbuild */
	dev->lltx = true;
	dev->netns_immutable = true;
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
	dev->lltx = true;
	dev->netns_local = true;
#else
	dev->features |= NETIF_F_LLTX | NETIF_F_NETNS_LOCAL;
#endif
}

static int clusterdev_validate(struct nlattr *tb[], struct nlattr *data[],
			       struct netlink_ext_ack *extack)
{
	const u8 *mac;

	if (!tb[IFLA_ADDRESS]) {
		NL_SET_ERR_MSG(extack, "clusterdev needs the cluster multicast MAC: address 01:..");
		return -EINVAL;
	}
	if (nla_len(tb[IFLA_ADDRESS]) != ETH_ALEN) {
		NL_SET_ERR_MSG_ATTR(extack, tb[IFLA_ADDRESS], "address must be 6 bytes");
		return -EINVAL;
	}
	mac = nla_data(tb[IFLA_ADDRESS]);
	if (!is_multicast_ether_addr(mac) || is_broadcast_ether_addr(mac)) {
		NL_SET_ERR_MSG_ATTR(extack, tb[IFLA_ADDRESS],
				    "address must be a multicast MAC (and not broadcast)");
		return -EADDRNOTAVAIL;
	}
	return 0;
}

/* From 6.15 newlink takes its arguments in struct rtnl_newlink_params. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
static int clusterdev_newlink(struct net_device *dev, struct rtnl_newlink_params *params,
			      struct netlink_ext_ack *extack)
{
	struct net *src_net = rtnl_newlink_link_net(params);
	struct nlattr **tb = params->tb;
#else
static int clusterdev_newlink(struct net *src_net, struct net_device *dev,
			      struct nlattr *tb[], struct nlattr *data[],
			      struct netlink_ext_ack *extack)
{
#endif
	struct clusterdev_priv *priv = netdev_priv(dev);
	struct net_device *lower;
	int err;

	if (!tb[IFLA_LINK]) {
		NL_SET_ERR_MSG(extack, "clusterdev needs a lower device: link <dev>");
		return -EINVAL;
	}
	lower = __dev_get_by_index(src_net, nla_get_u32(tb[IFLA_LINK]));
	if (!lower) {
		NL_SET_ERR_MSG(extack, "lower device not found");
		return -ENODEV;
	}
	if (lower->type != ARPHRD_ETHER || (lower->flags & IFF_LOOPBACK) ||
	    lower->rtnl_link_ops == &clusterdev_link_ops) {
		NL_SET_ERR_MSG(extack, "lower device must be an Ethernet device");
		return -EINVAL;
	}
	if (!net_eq(dev_net(lower), dev_net(dev))) {
		NL_SET_ERR_MSG(extack, "lower device must be in the same network namespace");
		return -EINVAL;
	}

	priv->dev = dev;
	priv->lower = lower;
	if (!tb[IFLA_MTU])
		dev->mtu = lower->mtu;
	else if (dev->mtu > lower->mtu)
		return -EINVAL;

	/* The namespace's first link brings its counters and hooks. */
	err = clusterdev_hook_net_enable(dev_net(dev));
	if (err)
		return err;
	/* The hook after conntrack needs conntrack running in this netns,
	 * which it only is once something asks for it.
	 */
	err = nf_ct_netns_get(dev_net(dev), NFPROTO_INET);
	if (err)
		return err;
	err = register_netdevice(dev);
	if (err)
		goto err_ct;
	err = netdev_upper_dev_link(lower, dev, extack);
	if (err)
		goto err_unregister;
	err = netdev_rx_handler_register(lower, clusterdev_handle_frame, priv);
	if (err) {
		NL_SET_ERR_MSG(extack,
			       "lower device already has a receive handler (bridge port, macvlan, clusterdev?)");
		goto err_unlink;
	}
	netif_stacked_transfer_operstate(lower, dev);
	return 0;

err_unlink:
	netdev_upper_dev_unlink(lower, dev);
err_unregister:
	/* needs_free_netdev frees dev; the caller must not. */
	unregister_netdevice(dev);
	nf_ct_netns_put(dev_net(dev), NFPROTO_INET);
	return err;
err_ct:
	nf_ct_netns_put(dev_net(dev), NFPROTO_INET);
	return err;
}

static void clusterdev_dellink(struct net_device *dev, struct list_head *head)
{
	struct clusterdev_priv *priv = netdev_priv(dev);

	netdev_rx_handler_unregister(priv->lower);
	netdev_upper_dev_unlink(priv->lower, dev);
	nf_ct_netns_put(dev_net(dev), NFPROTO_INET);
	unregister_netdevice_queue(dev, head);
}

struct rtnl_link_ops clusterdev_link_ops __read_mostly = {
	.kind = "clusterdev",
	.priv_size = sizeof(struct clusterdev_priv),
	.setup = clusterdev_setup,
	.validate = clusterdev_validate,
	.newlink = clusterdev_newlink,
	.dellink = clusterdev_dellink,
};

/* The lower device's state, MTU and offloads are cl0's; its removal removes cl0. */
static int clusterdev_device_event(struct notifier_block *nb, unsigned long event, void *ptr)
{
	struct net_device *lower = netdev_notifier_info_to_dev(ptr);
	struct clusterdev_priv *priv;
	LIST_HEAD(list_kill);

	if (rcu_access_pointer(lower->rx_handler) != clusterdev_handle_frame)
		return NOTIFY_DONE;
	priv = rtnl_dereference(lower->rx_handler_data);

	switch (event) {
	case NETDEV_UP:
	case NETDEV_DOWN:
	case NETDEV_CHANGE:
		netif_stacked_transfer_operstate(lower, priv->dev);
		break;
	case NETDEV_CHANGEMTU:
		/* cl0 follows, down (bounded) and up (in step). */
		if (priv->dev->mtu != lower->mtu)
			dev_set_mtu(priv->dev, lower->mtu);
		break;
	case NETDEV_FEAT_CHANGE:
		clusterdev_inherit(priv->dev, lower);
		netdev_update_features(priv->dev);
		break;
	case NETDEV_PRE_TYPE_CHANGE:
		/* cl0 is Ethernet on top of Ethernet (e.g. a bond turning
		 * into an InfiniBand one): refuse.
		 */
		return notifier_from_errno(-EOPNOTSUPP);
	case NETDEV_UNREGISTER:
		/* Also on a move of the lower device to another namespace:
		 * cl0 holds a conntrack reference in this one and cannot follow.
		 */
		clusterdev_dellink(priv->dev, &list_kill);
		unregister_netdevice_many(&list_kill);
		break;
	}
	return NOTIFY_DONE;
}

static struct notifier_block clusterdev_notifier = {
	.notifier_call = clusterdev_device_event,
};

int __init clusterdev_link_init(void)
{
	int err;

	err = register_netdevice_notifier(&clusterdev_notifier);
	if (err)
		return err;
	err = rtnl_link_register(&clusterdev_link_ops);
	if (err)
		unregister_netdevice_notifier(&clusterdev_notifier);
	return err;
}

void clusterdev_link_exit(void)
{
	rtnl_link_unregister(&clusterdev_link_ops);
	unregister_netdevice_notifier(&clusterdev_notifier);
}
