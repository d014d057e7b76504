"""FTP (passive and active) and TFTP through SNAT, and FTP to a port forward
(DNAT), across a failover and a drain of the node that owns the control
connection (TFTP: the read request), on real kernels with the real agent.

A NAT lab of its own (prefix fwq-, `lab up --nat`, the helper policy on
every node): the FTP client runs on the inside server host and is
source-NATed to the outside cluster address by the lab's NAT policy
(nat_policy.py); the FTP server runs on the outside client host and, like
vsftpd, accepts a passive data connection only from the control
connection's address, so a data connection that a new owner failed to
translate like its control connection fails the test. TFTP likewise: its
data comes from a new server port to the client's translated address, and
only the expectation's NAT (synced with it) leads it back to the client.

Active FTP is the hard case: the helper rewrites the client's PORT command
to the cluster address (a shorter one: the TCP sequence offsets this leaves
in the entry must reach the new owner, or the control connection breaks),
and the server's data connection to the cluster address must be led back to
the client (the expectation's NAT). The client sends a NOOP after every
transfer, so the control connection is used after the failover. The port
forward (192.0.2.1:21 to the inside server) is the mirror image: the helper
rewrites the server's PASV reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_cluster_behaviour
from test_stateful_helpers import check_ftp_case, check_tftp_case, helper_lab

from fwcluster_lab.state import LabState

pytestmark = test_cluster_behaviour.pytestmark  # root, nftables, the daemon

PREFIX = "fwq-"


@pytest.fixture(scope="module")
def lab(lab_run_dir: Callable[[str], Path]) -> Iterator[LabState]:
    with helper_lab(lab_run_dir(PREFIX), PREFIX, ("snat", "dnat"), "snat", nat=True) as state:
        yield state


@pytest.mark.parametrize("how", ["kill", "drain"])
@pytest.mark.parametrize("announced", [False, True], ids=["mid-transfer", "announced"])
@pytest.mark.parametrize("mode", ["passive", "active"])
def test_ftp_through_snat_survives_its_owner(
    lab: LabState, mode: str, announced: bool, how: str
) -> None:
    check_ftp_case(lab, "snat", mode, how, announced=announced)
    assert lab.procs["ftp-snat:server"].alive()


@pytest.mark.parametrize("how", ["kill", "drain"])
@pytest.mark.parametrize("announced", [False, True], ids=["mid-transfer", "announced"])
@pytest.mark.parametrize("mode", ["passive", "active"])
def test_ftp_to_a_port_forward_survives_its_owner(
    lab: LabState, mode: str, announced: bool, how: str
) -> None:
    """The client connects to the cluster address, forwarded to the server:
    in passive mode the helper rewrites the server's PASV reply (its own
    address becomes the cluster address: sequence offsets in the reply
    direction) and the data connection to the cluster address must be
    forwarded too (the expectation's NAT)."""
    check_ftp_case(lab, "dnat", mode, how, announced=announced)
    assert lab.procs["ftp-dnat:server"].alive()


@pytest.mark.parametrize("how", ["kill", "drain"])
@pytest.mark.parametrize("when", ["before-data", "mid-transfer"])
def test_tftp_through_snat_survives_its_owner(lab: LabState, when: str, how: str) -> None:
    check_tftp_case(lab, "snat", when, how)
    assert lab.procs["tftp-snat:server"].alive()
