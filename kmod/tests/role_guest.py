#!/usr/bin/python3
"""The clusterdev role, applied by Ansible inside a virtme-ng guest.

Run by kmod/tools/run-role-test.sh as the guest's command (the guest shares
the host's filesystem read-only, with writable overlays where apt, DKMS and
/lib/modules write). Uses only the standard library: it is started by the
Debian interpreter, and runs the project venv's ansible-playbook against
localhost (connection local) with kmod/tests/role_test.yml.

Steps, each a PASS/FAIL line, then "role-guest: N passed, M failed":
  1. first run: builds with DKMS and loads (changes something, fails nothing);
     the module is loaded, DKMS shows it installed for this kernel, it is
     loaded at boot;
  2. second run: changed=0; a --check --diff run: changed=0;
  3. a new version of the source (a copy with dkms.conf's version bumped):
     the old version leaves DKMS and /usr/src, the new one is installed, the
     loaded module is replaced (a clusterdev link made before is gone) and the
     fake clusterctl saw: drain while the old module was loaded, rejoin after
     the new one was; a run after that: changed=0;
  4. refusal: a kernel configuration without CONFIG_MODULES fails the run
     with the message, changing nothing;
  5. dmesg has no kernel warning.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PLAYBOOK = os.path.join(HERE, "role_test.yml")
FAKE_CLUSTERCTL = os.path.join(HERE, "role_fake_clusterctl.py")
WORK = "/tmp/role-test"
LINK, LOWER = "rt-cd0", "rt-v0"
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
    re.MULTILINE,
)
KERNEL_TROUBLE = re.compile(r"WARNING:|BUG:|Oops|KFENCE|kernel BUG|general protection")

results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict} {name}" + ("" if ok else f": {detail}"), flush=True)


def sh(*argv, timeout=120):
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout
    )


# Ansible under TCG on a shared 2-core machine takes about a minute per task.
PLAYBOOK_TIMEOUT = int(os.environ.get("ROLE_TEST_PLAYBOOK_TIMEOUT", "5400"))
STEPS = ("first", "again", "upgrade", "refusal")


def playbook(name, *extra, timeout=PLAYBOOK_TIMEOUT):
    """One ansible-playbook run; returns (rc, changed, failed, output)."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_HOME=WORK + "/ansible-home",
        ANSIBLE_LOCAL_TEMP=WORK + "/ansible-tmp",
        ANSIBLE_REMOTE_TEMP=WORK + "/ansible-tmp",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    argv = [
        os.path.join(REPO, ".venv/bin/ansible-playbook"),
        "-i", "localhost,",
        "-e", "ansible_python_interpreter=/usr/bin/python3",
        *extra,
        PLAYBOOK,
    ]  # fmt: skip
    start = time.monotonic()
    try:
        p = subprocess.run(
            argv,
            check=False,
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"timed out after {timeout} s\n{exc.stdout or ''}", -1
    with open(f"{WORK}/{name}.log", "w") as f:
        f.write(out)
    m = RECAP.search(out)
    changed, failed = (int(m.group(2)), int(m.group(4))) if m else (-1, -1)
    print(
        f"  run {name}: rc {rc}, changed={changed}, failed={failed}, {time.monotonic() - start:.0f} s"
    )
    return rc, changed, failed, out


def tail(out, n=25):
    return "\n" + "\n".join("    " + line for line in out.splitlines()[-n:])


def dkms_status():
    return sh("dkms", "status", "-m", "clusterdev").stdout


def installed_line(version, kver):
    return re.compile(
        rf"^clusterdev/{re.escape(version)}, {re.escape(kver)}, [^:]+: installed",
        re.MULTILINE,
    )


def source_copy(version):
    """The module source with its dkms.conf naming `version`: a new release."""
    src = os.path.join(REPO, "kmod", "clusterdev")
    dst = f"{WORK}/src-{version}"
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in os.listdir(src):
        if name.endswith((".c", ".h")) or name in ("Kbuild", "Makefile"):
            shutil.copy(os.path.join(src, name), dst)
    with open(os.path.join(src, "dkms.conf")) as f:
        conf = re.sub(
            r"(?m)^PACKAGE_VERSION=.*$", f'PACKAGE_VERSION="{version}"', f.read()
        )
    with open(os.path.join(dst, "dkms.conf"), "w") as f:
        f.write(conf)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="comma-separated, among " + ", ".join(STEPS),
    )
    steps = ap.parse_args().steps.split(",")
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error("unknown steps: " + ", ".join(sorted(unknown)))
    kver = os.uname().release
    os.makedirs(WORK + "/ansible-tmp", exist_ok=True)
    with open(os.path.join(REPO, "kmod", "clusterdev", "dkms.conf")) as f:
        version = re.search(r'(?m)^PACKAGE_VERSION="?([^"\s]+)', f.read()).group(1)
    print(f"role-guest: kernel {kver}, clusterdev {version}", flush=True)

    rc, changed, failed, out = playbook("first")  # 1. build, install, load
    check("first run succeeds", rc == 0 and failed == 0, tail(out))
    check("first run changes the node", changed > 0, f"changed={changed}")
    check("module loaded", os.path.isdir("/sys/module/clusterdev"))
    status = dkms_status()
    check(
        f"dkms: installed for {kver}",
        installed_line(version, kver).search(status),
        status,
    )
    check(
        "module source in /usr/src",
        os.path.isfile(f"/usr/src/clusterdev-{version}/dkms.conf"),
    )
    try:
        with open("/etc/modules-load.d/clusterdev.conf") as f:
            boot = f.read()
    except OSError as exc:
        boot = str(exc)
    check("loaded at boot (modules-load.d)", re.search(r"(?m)^clusterdev$", boot), boot)

    if "again" in steps:
        idempotence()
    if "upgrade" in steps:
        upgrade(version, kver)
    if "refusal" in steps:
        refusal(kver)
    # 5. the kernel said nothing alarming through all of it
    dmesg = sh("dmesg").stdout
    trouble = [line for line in dmesg.splitlines() if KERNEL_TROUBLE.search(line)]
    check("dmesg clean", not trouble, "\n".join(trouble[:20]))

    n_ok = sum(results)
    print(f"role-guest: {n_ok} passed, {len(results) - n_ok} failed", flush=True)
    return 0 if n_ok == len(results) else 1


def idempotence():
    """2. A second run and a dry run change nothing."""
    rc, changed, _, out = playbook("second")
    check(
        "second run: changed=0",
        rc == 0 and changed == 0,
        f"rc {rc} changed={changed}{tail(out)}",
    )
    rc, changed, _, out = playbook("check", "--check", "--diff")
    check(
        "--check --diff run: changed=0",
        rc == 0 and changed == 0,
        f"rc {rc} changed={changed}{tail(out)}",
    )


def upgrade(version, kver):
    """3. A new version: the old one leaves DKMS, the module is replaced through a drain."""
    new = version + ".1"
    src = source_copy(new)
    fake = WORK + "/clusterctl"
    shutil.copy(FAKE_CLUSTERCTL, fake)
    os.chmod(fake, 0o755)
    for suffix in (".log", ".state"):
        if os.path.exists(fake + suffix):
            os.remove(fake + suffix)
    sh("ip", "link", "add", LOWER, "type", "veth", "peer", "name", "rt-v1")
    p = sh(
        "ip",
        "link",
        "add",
        LINK,
        "link",
        LOWER,
        "address",
        "01:00:5e:7f:00:01",
        "type",
        "clusterdev",
    )
    check("a clusterdev link on the old module", p.returncode == 0, p.stderr)
    upgrade = (
        "-e",
        "clusterdev_source=" + src,
        "-e",
        "clusterdev_clusterctl=" + fake,
        "-e",
        "clusterdev_agent_service=",
    )
    rc, changed, failed, out = playbook("upgrade", *upgrade)
    check("upgrade run succeeds", rc == 0 and failed == 0, tail(out))
    status = dkms_status()
    check(f"dkms: {new} installed, {version} gone",
          installed_line(new, kver).search(status) and f"clusterdev/{version}," not in status
          and f"clusterdev/{version}:" not in status, status)  # fmt: skip
    check(
        "old source removed from /usr/src",
        not os.path.exists(f"/usr/src/clusterdev-{version}"),
    )
    check("module loaded after the upgrade", os.path.isdir("/sys/module/clusterdev"))
    check(
        "module replaced (the old module's link is gone)",
        not os.path.exists("/sys/class/net/" + LINK),
    )
    try:
        with open(fake + ".log") as f:
            calls = f.read().split("\n")
    except OSError:
        calls = []
    verbs = [c.split(" ")[0] for c in calls if c]
    drain = next((c for c in calls if c.startswith("drain ")), "")
    join = next((c for c in calls if c.startswith("join ")), "")
    check("drained before the unload, rejoined after the load",
          "drain" in verbs and "join" in verbs and verbs.index("drain") < verbs.index("join")
          and drain == "drain loaded=1 link=1" and join == "join loaded=1 link=0", "\n".join(calls))  # fmt: skip
    rc, changed, _, out = playbook("upgrade-again", *upgrade)
    check(
        "run after the upgrade: changed=0",
        rc == 0 and changed == 0,
        f"rc {rc} changed={changed}{tail(out)}",
    )
    with open(fake + ".log") as f:
        calls_after = f.read().split("\n")
    check(
        "no drain without a reload",
        calls_after == calls,
        "\n".join(calls_after[len(calls) :]),
    )
    sh("ip", "link", "del", LOWER)


def refusal(kver):
    """4. A kernel without module support (its configuration faked) is refused."""
    fake = WORK + "/clusterctl"
    upgrade = ("-e", "clusterdev_clusterctl=" + fake, "-e", "clusterdev_agent_service=")
    fake_config = WORK + "/config-no-modules"
    with open(fake_config, "w") as f:
        f.write("# CONFIG_MODULES is not set\n")
    rc, changed, failed, out = playbook(
        "refusal", "-e", "clusterdev_kernel_config=" + fake_config, *upgrade
    )
    check("refusal: the run fails, changing nothing", rc != 0 and failed == 1 and changed == 0,
          f"rc {rc} changed={changed} failed={failed}")  # fmt: skip
    want = f"kernel {kver} on localhost cannot load kernel modules (CONFIG_MODULES is not set in {fake_config})"
    check(
        "refusal: the message names the kernel and the reason", want in out, tail(out)
    )


if __name__ == "__main__":
    sys.exit(main())
