#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on a fresh Debian 12 machine:
# the Debian packages of the data plane and lab, and the project virtualenv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/commands.sh

# The Debian packages of the "base" rows of tools/commands.tsv, except
# systemd-container: it must match the installed systemd (below).
mapfile -t APT_PACKAGES < <(commands_packages base | grep -vx systemd-container)
APT_PACKAGES+=(python3-venv)  # no command of its own: `python3 -m venv`

mapfile -t missing < <(commands_missing_packages "${APT_PACKAGES[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# systemd-nspawn (test hosts) must match the installed systemd exactly: the
# machine may carry bookworm's or bookworm-backports' systemd.
systemd_version=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
if [ "$(dpkg-query -W -f='${Version}' systemd-container 2>/dev/null || true)" != "$systemd_version" ] ||
   [ -z "$systemd_version" ]; then
    [ "$(id -u)" -eq 0 ] || { echo "bootstrap: need root to install systemd-container" >&2; exit 1; }
    echo "bootstrap: installing systemd-container${systemd_version:+=$systemd_version}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        "systemd-container${systemd_version:+=$systemd_version}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# The agent, the lab, the benchmarks and the test hosts, each an editable
# package: every script and test imports them from the venv, no path edits.
projects=(agent lab bench testhosts)
stale=0
[ -f "$stamp" ] && [ ! tools/requirements-ansible.txt -nt "$stamp" ] || stale=1
for p in "${projects[@]}"; do [ "$p/pyproject.toml" -nt "$stamp" ] && stale=1; done
if [ "$stale" -eq 1 ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e 'agent[dev]' -e lab -e bench -e testhosts \
        -r tools/requirements-ansible.txt
    touch "$stamp"
fi

# Every command the base area runs, Debian's and the venv's, is there now.
commands_check base .venv/bin || {
    echo "bootstrap: some commands are still missing (above); install their packages" >&2
    exit 1
}
