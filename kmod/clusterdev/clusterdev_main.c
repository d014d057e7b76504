// SPDX-License-Identifier: GPL-2.0-only
/*
 * clusterdev: connection-based multicast-MAC clustering for active-active
 * firewalls.
 *
 * All nodes of a cluster share the cluster IP addresses, held by a
 * "clusterdev" link on top of each node's real interface and answered in ARP
 * with a multicast MAC, so that every node receives every packet. A netfilter
 * hook after conntrack lets packets of known connections pass and a NEW
 * connection only if its bucket (a seeded, symmetric hash of the connection)
 * is owned by this node. Which buckets a node owns is set by the fwcluster
 * agent over generic netlink. See docs/clusterdev.md.
 *
 * This file owns the per-network-namespace state and module (un)loading.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <net/genetlink.h>

#include "clusterdev.h"

unsigned int clusterdev_net_id __read_mostly;

static int __net_init clusterdev_net_init(struct net *net)
{
	struct clusterdev_net *cn = clusterdev_pernet(net);
	struct clusterdev_cfg *cfg;

	/* Only the configuration (under 1 KiB): hooks and counters come with
	 * the namespace's first clusterdev link (clusterdev_hook_net_enable),
	 * so loading the module costs other namespaces nothing per packet.
	 */
	mutex_init(&cn->cfg_lock);
	cfg = kzalloc(sizeof(*cfg), GFP_KERNEL);
	if (!cfg)
		return -ENOMEM;

	/* Until the agent says otherwise this node owns no bucket: accepting
	 * everything would make every node forward the same connection.
	 */
	cfg->buckets = 256;
	cfg->mark_mask = 0x0000ffff;
	cfg->hash_fields = CLUSTERDEV_HASH_ADDRESSES_PORTS;
	RCU_INIT_POINTER(cn->cfg, cfg);
	return 0;
}

static void __net_exit clusterdev_net_exit(struct net *net)
{
	struct clusterdev_net *cn = clusterdev_pernet(net);

	/* Unregisters the hooks, waits for packets still inside them
	 * (synchronize_net), frees the counters.
	 */
	clusterdev_hook_net_exit(net);
	kfree(rcu_dereference_protected(cn->cfg, 1));
}

/*
 * A subsys (not device) pernet operation: on namespace teardown it runs after
 * the devices are gone, so a dying clusterdev link never sees freed state,
 * and before conntrack's own teardown.
 */
static struct pernet_operations clusterdev_net_ops = {
	.init = clusterdev_net_init,
	.exit = clusterdev_net_exit,
	.id = &clusterdev_net_id,
	.size = sizeof(struct clusterdev_net),
};

static int __init clusterdev_init(void)
{
	int err;

	err = register_pernet_subsys(&clusterdev_net_ops);
	if (err)
		return err;
	err = clusterdev_genl_init();
	if (err)
		goto err_pernet;
	err = clusterdev_link_init();
	if (err)
		goto err_genl;
	return 0;

err_genl:
	clusterdev_genl_exit();
err_pernet:
	unregister_pernet_subsys(&clusterdev_net_ops);
	return err;
}

static void __exit clusterdev_exit(void)
{
	/* Deletes every clusterdev link in every namespace first. */
	clusterdev_link_exit();
	clusterdev_genl_exit();
	unregister_pernet_subsys(&clusterdev_net_ops);
}

module_init(clusterdev_init);
module_exit(clusterdev_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("fwcluster");
MODULE_DESCRIPTION("Connection-based multicast-MAC clustering for active-active firewalls");
MODULE_ALIAS_RTNL_LINK("clusterdev");
MODULE_ALIAS_GENL_FAMILY("clusterdev");
