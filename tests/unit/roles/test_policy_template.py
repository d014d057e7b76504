"""The dataplane role's NAT policy for a cluster: masquerade translates to
the outgoing zone's cluster address with each node's own port range, a
port forward's UDP replies never start a connection, slots are unique, and
nftables accepts the result (`nft -c`, in a private network namespace)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_inventory_validation import GOOD, REPO, ansible_playbook, failure_text

PLAYBOOK = Path(__file__).with_name("render_policy_playbook.yml")
NAT: dict[str, Any] = {
    **{
        k: v for k, v in GOOD.items() if k != "dataplane_nat_slot"
    },  # slots are per host here
    "dataplane_masquerade": [{"from": "inside", "to": "outside"}],
    "dataplane_dnat": [
        {"zone": "outside", "proto": "udp", "dport": 5353, "to": "203.0.113.10:53"},
        {"zone": "outside", "proto": "tcp", "dport": 8443, "to": "203.0.113.10:443"},
    ],
}


def render(
    tmp_path: Path, hosts: dict[str, dict[str, Any]], *args: str
) -> subprocess.CompletedProcess[str]:
    inventory = {
        "all": {
            "vars": {**NAT, "ansible_python_interpreter": sys.executable},
            "children": {"firewalls": {"hosts": hosts}},
        }
    }
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inventory))
    return ansible_playbook(
        "-i", str(path), "-e", f"policy_out_dir={tmp_path}", *args, str(PLAYBOOK)
    )


def test_each_node_masquerades_to_the_cluster_address_from_its_own_range(
    tmp_path: Path,
) -> None:
    proc = render(
        tmp_path,
        {
            "fw1": {"dataplane_nat_slot": 1},
            "fw2": {"dataplane_nat_slot": 2},
            "fw3": {"dataplane_nat_slot": 3},
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranges = {}
    for host in ("fw1", "fw2", "fw3"):
        text = (tmp_path / f"{host}.nft").read_text()
        (line,) = [x for x in text.splitlines() if "snat ip to" in x]
        assert 'iifname "in0" oifname "out0"' in line
        ranges[host] = line.split("snat ip to 192.0.2.1:")[1].strip()
        guard = [x.strip() for x in text.splitlines() if "ct state new drop" in x]
        assert guard == ["ip saddr 203.0.113.10 udp sport 53 ct state new drop"]
    assert ranges == {"fw1": "20000-20749", "fw2": "20750-21499", "fw3": "21500-22249"}


def test_two_nodes_with_one_slot_are_refused(tmp_path: Path) -> None:
    proc = render(
        tmp_path, {"fw1": {"dataplane_nat_slot": 2}, "fw2": {"dataplane_nat_slot": 2}}
    )
    assert proc.returncode != 0
    assert "fw2: dataplane_nat_slot 2 is also fw1's" in failure_text(
        proc.stdout + proc.stderr
    )


def test_a_masquerading_node_without_slot_is_refused(tmp_path: Path) -> None:
    proc = render(tmp_path, {"fw1": {"dataplane_nat_slot": 1}, "fw2": {}})
    assert proc.returncode != 0
    assert "fw2: dataplane_nat_slot is not set" in failure_text(
        proc.stdout + proc.stderr
    )


def test_a_limited_run_sees_the_slot_of_a_node_left_out(tmp_path: Path) -> None:
    """--limit fw3 used to give fw3 the slot of fw1 (its position in the play)."""
    hosts = {"fw1": {"dataplane_nat_slot": 1}, "fw3": {"dataplane_nat_slot": 1}}
    proc = render(tmp_path, hosts, "--limit", "fw3")
    assert proc.returncode != 0
    assert "fw3: dataplane_nat_slot 1 is also fw1's" in failure_text(
        proc.stdout + proc.stderr
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None,
    reason="nft -c needs root and nftables",
)
def test_nftables_accepts_the_rendered_policy(tmp_path: Path) -> None:
    assert render(tmp_path, {"fw1": {"dataplane_nat_slot": 1}}).returncode == 0
    check = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(tmp_path / "fw1.nft")],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stderr


RICH: dict[str, Any] = {
    "dataplane_sets": [
        {"name": "admins", "type": "ipv4_addr", "elements": ["198.51.100.0/28", "192.0.2.10"]},
        {"name": "admins6", "type": "ipv6_addr", "elements": ["2001:db8::/64"]},
    ],
    "dataplane_input_allow": [
        {"proto": "tcp", "dports": [22], "saddr": "@admins"},
        {"proto": "tcp", "dports": [22], "saddr": "@admins6"},
        {"proto": "tcp", "dports": [9100], "action": "reject", "log": True},
    ],
    "dataplane_forward_allow": [
        {"from": "outside", "to": "inside", "daddr": "203.0.113.10", "proto": "tcp", "dports": [443]},
        {"from": "outside", "to": "inside", "saddr": ["192.0.2.66", "192.0.2.67"], "action": "drop", "log": True},
        {"from": "inside", "to": "outside", "daddr": "2001:db8:1::/48", "action": "reject"},
    ],
    "dataplane_raw_rules": {"forward": ["meta l4proto ipv6-icmp accept"], "input": ["meta l4proto ipv6-icmp accept"]},
}


def render_fw1(tmp_path: Path, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The NAT inventory with `extra`, one node fw1 (slot 1), rendered."""
    return render(tmp_path, {"fw1": {"dataplane_nat_slot": 1}}, "-e", f"@{extra_file(tmp_path, extra)}")


def extra_file(tmp_path: Path, extra: dict[str, Any]) -> Path:
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(extra))
    return path


def rendered_rules(tmp_path: Path, extra: dict[str, Any]) -> str:
    proc = render_fw1(tmp_path, extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (tmp_path / "fw1.nft").read_text()


def test_port_forwards_answer_only_for_their_address(tmp_path: Path) -> None:
    """Issue 15.8: a DNAT without a destination match captured transit traffic."""
    text = rendered_rules(tmp_path, {})
    dnat = [x.strip() for x in text.splitlines() if "dnat ip to" in x]
    assert dnat == [
        'iifname "out0" ip daddr 192.0.2.1 udp dport 5353 dnat ip to 203.0.113.10:53',
        'iifname "out0" ip daddr 192.0.2.1 tcp dport 8443 dnat ip to 203.0.113.10:443',
    ]


def test_sets_addresses_log_and_reject(tmp_path: Path) -> None:
    lines = [x.strip() for x in rendered_rules(tmp_path, RICH).splitlines()]
    assert "ip saddr @admins tcp dport { 22 } accept" in lines
    assert "ip6 saddr @admins6 tcp dport { 22 } accept" in lines
    assert 'tcp dport { 9100 } log prefix "fwpolicy " reject' in lines
    assert 'iifname "out0" oifname "in0" ip daddr { 203.0.113.10 } meta l4proto tcp th dport { 443 } accept' in lines
    assert 'iifname "out0" oifname "in0" ip saddr { 192.0.2.66, 192.0.2.67 } log prefix "fwpolicy " drop' in lines
    assert 'iifname "in0" oifname "out0" ip6 daddr { 2001:db8:1::/48 } reject' in lines
    assert lines.count("meta l4proto ipv6-icmp accept") == 2
    assert "flags interval;" in lines


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="nft -c needs root and nftables"
)
@pytest.mark.parametrize("policy", ["rich", "dual_stack"])
def test_nftables_accepts_the_policy(tmp_path: Path, policy: str) -> None:
    """The rich model (sets, log, reject, raw rules) and IPv6 NAT load."""
    rendered_rules(tmp_path, {"rich": RICH, "dual_stack": DUAL_STACK}[policy])
    check = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(tmp_path / "fw1.nft")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    assert check.returncode == 0, check.stderr + (tmp_path / "fw1.nft").read_text()


def test_input_drops_by_default_but_lets_management_and_the_agent_in(tmp_path: Path) -> None:
    """Issue 15.8: the input chain defaulted to accept. Now drop, with the
    management access first and the agent's zone heartbeats on every zone."""
    lines = [x.strip() for x in rendered_rules(tmp_path, {}).splitlines()]
    (policy,) = [x for x in lines if x.startswith("type filter hook input")]
    assert policy.endswith("policy drop;")
    # The default management access: SSH on Ansible's port, before any service.
    assert "tcp dport { 22 } accept" in lines
    assert 'iifname { "out0", "in0" } ip daddr 239.255.77.2 udp dport 7789 accept' in lines
    assert 'iifname "sync0" udp dport 7788 accept' in lines


def test_management_access_comes_before_the_services(tmp_path: Path) -> None:
    lines = [
        x.strip()
        for x in rendered_rules(
            tmp_path,
            {
                "dataplane_management_access": [
                    {"proto": "tcp", "dports": [2222], "saddr": "198.18.10.0/24"}
                ],
                "dataplane_input_allow": [{"proto": "tcp", "dports": [9100], "action": "reject"}],
            },
        ).splitlines()
    ]
    ssh = lines.index("ip saddr { 198.18.10.0/24 } tcp dport { 2222 } accept")
    assert ssh < lines.index("tcp dport { 9100 } reject")
    assert "tcp dport { 22 } accept" not in lines


def test_drop_without_management_access_is_refused(tmp_path: Path) -> None:
    """An empty management access with the drop policy would lock Ansible out."""
    proc = render_fw1(tmp_path, {"dataplane_management_access": []})
    assert proc.returncode != 0
    assert "dataplane_management_access may not be empty" in failure_text(proc.stdout + proc.stderr)
    assert not (tmp_path / "fw1.nft").exists()


def test_the_zone_heartbeat_group_is_the_agents() -> None:
    transport = REPO / "agent" / "availability_manager" / "daemon" / "transport.py"
    if not transport.exists():
        pytest.skip("not in a clone: the agent's source is not here")
    import yaml

    group = yaml.safe_load((REPO / "roles" / "dataplane" / "vars" / "main.yml").read_text())[
        "__dataplane_zone_heartbeat_group"
    ]
    assert f'ZONE_HEARTBEAT_GROUP = ipaddress.IPv4Address("{group}")' in transport.read_text()


DUAL_STACK: dict[str, Any] = {
    "availability_manager_zones": [
        {
            "name": "outside",
            "interface": "out0",
            "cluster_ips": ["192.0.2.1/24", "2001:db8:1::1/64"],
            "cluster_mac": "01:00:5e:7f:00:01",
        },
        {
            "name": "inside",
            "interface": "in0",
            "cluster_ips": ["203.0.113.1/24", "2001:db8:2::1/64"],
            "cluster_mac": "01:00:5e:7f:00:02",
        },
    ],
    "dataplane_dnat": [
        {"zone": "outside", "proto": "tcp", "dport": 8443, "to": "[2001:db8:2::10]:443"},
        {"zone": "outside", "proto": "udp", "dport": 5353, "to": "[2001:db8:2::10]:53"},
        {"zone": "outside", "proto": "tcp", "dport": 8080, "to": "203.0.113.10:80"},
    ],
}


def test_ipv6_nat_masquerades_and_forwards_on_the_cluster_ipv6_address(tmp_path: Path) -> None:
    """Issue 15.8: no IPv6 NAT. A dual-stack outgoing zone gets both
    translations from the node's own port range; an IPv6 port forward answers
    only for the zone's cluster IPv6 address."""
    lines = [x.strip() for x in rendered_rules(tmp_path, DUAL_STACK).splitlines()]
    snat = [x for x in lines if " snat " in x]
    assert snat == [
        'iifname "in0" oifname "out0" meta l4proto { tcp, udp, icmp } snat ip to 192.0.2.1:20000-20749',
        'iifname "in0" oifname "out0" meta l4proto { tcp, udp, ipv6-icmp } snat ip6 to [2001:db8:1::1]:20000-20749',
    ]
    dnat = [x for x in lines if " dnat " in x]
    assert dnat == [
        'iifname "out0" ip6 daddr 2001:db8:1::1 tcp dport 8443 dnat ip6 to [2001:db8:2::10]:443',
        'iifname "out0" ip6 daddr 2001:db8:1::1 udp dport 5353 dnat ip6 to [2001:db8:2::10]:53',
        'iifname "out0" ip daddr 192.0.2.1 tcp dport 8080 dnat ip to 203.0.113.10:80',
    ]
    assert "ip6 saddr 2001:db8:2::10 udp sport 53 ct state new drop" in lines


def test_an_ipv6_forward_on_a_zone_without_ipv6_is_refused(tmp_path: Path) -> None:
    forward = {"zone": "outside", "proto": "tcp", "dport": 8443, "to": "[2001:db8:2::10]:443"}
    proc = render_fw1(tmp_path, {"dataplane_dnat": [forward]})
    assert proc.returncode != 0
    assert "fw1: dataplane_dnat[0]: zone outside has no cluster IPv6 address" in failure_text(
        proc.stdout + proc.stderr
    )


def test_masquerade_into_an_ipv6_only_zone_translates_only_ipv6(tmp_path: Path) -> None:
    """Refused before IPv6 NAT existed; now the one translation there is."""
    zones = [dict(z) for z in DUAL_STACK["availability_manager_zones"]]
    zones[0]["cluster_ips"] = ["2001:db8:1::1/64"]
    text = rendered_rules(
        tmp_path, {"availability_manager_zones": zones, "dataplane_dnat": []}
    )
    snat = [x.strip() for x in text.splitlines() if " snat " in x]
    assert snat == [
        'iifname "in0" oifname "out0" meta l4proto { tcp, udp, ipv6-icmp } snat ip6 to [2001:db8:1::1]:20000-20749'
    ]
