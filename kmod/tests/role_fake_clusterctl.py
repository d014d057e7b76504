#!/usr/bin/python3
"""A stand-in for the agent's clusterctl in the role's guest test.

The guest has no systemd and runs no agent, yet the role's reload must go
through a drain. This script answers `status --json`, `drain` and `join` the
way clusterctl does for a node in a two-node cluster, keeps its state in
<this file>.state, and logs every call to <this file>.log with what the
kernel looked like at that moment (module loaded? test link present?), so
the test can check that the drain came before the unload and the rejoin after
the new module was loaded.
"""

import json
import os
import sys

ME = "198.51.100.11"
PEER = "198.51.100.12"
BUCKETS = 256
LINK = os.environ.get("ROLE_TEST_LINK", "rt-cd0")


def load_state(path):
    try:
        with open(path) as f:
            return json.load(f)["state"]
    except (OSError, ValueError, KeyError):
        return "member"


def status(state):
    mine = [] if state == "draining" else list(range(0, BUCKETS, 2))
    owners = [[ME] if b in mine else [PEER] for b in range(BUCKETS)]
    return {
        "node_id": ME,
        "state": state,
        "owned": mine,
        "members": [ME, PEER],
        "owners": owners,
        "stable": True,
        "buckets": BUCKETS,
    }


def main(argv):
    base = os.path.abspath(__file__)
    state_file, log_file = base + ".state", base + ".log"
    # The role's modules pass --socket only when asked; skip it if present.
    args = [a for a in argv if a != "--json"]
    if args[:1] == ["--socket"]:
        args = args[2:]
    verb = args[0] if args else ""
    state = load_state(state_file)
    loaded = int(os.path.exists("/sys/module/clusterdev"))
    link = int(os.path.exists("/sys/class/net/" + LINK))
    with open(log_file, "a") as f:
        f.write(f"{verb} loaded={loaded} link={link}\n")
    if verb == "status":
        print(json.dumps(status(state)))
        return 0
    if verb in ("drain", "join"):
        with open(state_file, "w") as f:
            json.dump({"state": "draining" if verb == "drain" else "member"}, f)
        return 0
    print(f"fake clusterctl: unsupported {argv!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
