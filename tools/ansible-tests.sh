#!/usr/bin/env bash
# `make test-ansible`: everything about the Ansible collection fwcluster.cluster,
# cheapest first: lint, the changelog fragments (antsibull-changelog lint),
# the built collection tarball, ansible-test sanity, then the molecule
# scenarios on systemd-nspawn test hosts (needs root). The collection's unit
# tests (tests/unit: modules, inventory validation, role tasks on localhost,
# test-host builder) run in `make test-unit`, with every other unit test:
# in `make test` they then run on idle cores, not beside the kernel module's
# TCG guests, which `make test` starts together with this script. Each step
# is bounded in time; whatever happens, the test hosts are removed at the end.
# Ends with: ansible: N passed, M failed
#
#   ANSIBLE_TESTS_SCENARIOS="default failover"  only these molecule scenarios
#   ANSIBLE_TESTS_SKIP="sanity molecule"        skip steps by name
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=$REPO/.venv
export PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 PY_COLORS=0
LOGS=$REPO/.cache/ansible-tests
SANITY_VENV=$REPO/.cache/ansible-sanity-venv
SCENARIOS=${ANSIBLE_TESTS_SCENARIOS:-default failover drain remove rotate_key reboot reconfigure nat rolling}
SKIP=" ${ANSIBLE_TESTS_SKIP:-} "
TMP=$(mktemp -d /tmp/fwcluster-ansible-tests.XXXXXX)
mkdir -p "$LOGS"

passed=0
failed=0
summary=()

cleanup() {
    # Test hosts by recorded pids and our own names (testhosts down), the
    # collection copies ansible-lint/molecule may leave in the project, temp files.
    "$VENV/bin/python" -m testhosts down >>"$LOGS/cleanup.log" 2>&1 || true
    rm -rf "$REPO/.ansible" "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME TIMEOUT_S COMMAND...: run, log to $LOGS/NAME.log, count.
step() {
    local name=$1 limit=$2
    shift 2
    if [[ $SKIP == *" $name "* || $SKIP == *" ${name%%:*} "* ]]; then
        summary+=("skip  $name")
        return 0
    fi
    local log="$LOGS/${name//[:\/]/-}.log" start=$SECONDS rc
    echo "ansible-tests: $name ..."
    # The steps are shell functions: run them in a child bash that timeout can kill.
    timeout --kill-after=30 "$limit" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        summary+=("pass  $name ($((SECONDS - start))s)")
    else
        failed=$((failed + 1))
        [ $rc -eq 124 ] && echo "ansible-tests: $name timed out after ${limit}s" >>"$log"
        summary+=("FAIL  $name ($((SECONDS - start))s, log $log)")
        tail -n 30 "$log" | sed "s/^/  $name| /"
        # Last, so that make test's summary (the last matching lines) shows
        # why, not only molecule's recap: the failed tasks' own messages.
        grep -E 'fatal: |FAILED! |failed: \[|AssertionError|^E  ' "$log" | tail -n 4 | cut -c1-400 |
            sed "s/^/  $name| /"
    fi
    # Connection counts measured by the scenarios, for the record.
    grep -ho 'connections: [^|"]*' "$log" 2>/dev/null | sort -u | sed "s/^/  $name: /" || true
    return 0
}

ensure_tools() {
    # Everything comes from the bootstrap (a second run only checks): the
    # Python side (ansible-lint, molecule, testinfra) into the project venv,
    # mmdebstrap (builds the test hosts' root) and systemd-container (boots
    # it), pinned to the installed systemd: tools/commands.tsv, area base.
    ./tools/bootstrap.sh
}

lint() {
    rm -rf "$REPO/.ansible"
    # at the repository root, as a user runs it: .ansible-lint links to
    # tests/sanity/ansible-lint.yml (production profile, what is excluded)
    ansible-lint --nocolor -f pep8
}

# The changelog fragments (changelogs/fragments) in antsibull-changelog's
# format: a misspelt section or a fragment that is not a list fails here,
# not at release time.
changelog() {
    antsibull-changelog lint
}

# The built tarball: nothing development-only inside, the essentials there,
# and its modules and filters work once installed somewhere else.
build_and_install() {
    local out=$TMP/build inst=$TMP/installed
    tools/build-collection.sh "$out" || return 1
    [ ! -e roles/availability_manager/files/agent-wheelhouse.tar ] ||
        { echo "tools/build-collection.sh left the bundled wheelhouse in the clone"; return 1; }
    local tarball=("$out"/fwcluster-cluster-*.tar.gz)
    local listing
    listing=$(tar -tzf "${tarball[0]}") || return 1
    for must in roles/availability_manager/tasks/main.yml roles/dataplane/tasks/main.yml \
        plugins/modules/member.py plugins/modules/cluster_info.py plugins/filter/network.py \
        plugins/module_utils/clusterctl.py plugins/module_utils/addresses.py \
        playbooks/site.yml playbooks/node-argument.yml meta/runtime.yml \
        roles/clusterdev/tasks/main.yml kmod/clusterdev/dkms.conf kmod/clusterdev/clusterdev_hook.c \
        roles/availability_manager/files/agent-wheelhouse.tar; do
        grep -qx "$must" <<<"$listing" || { echo "missing from the tarball: $must"; return 1; }
    done
    for never in .venv/ .cache/ .git/ lab/ agent/ kmod/tools/ kmod/tests/ kmod/build/ kmod/.venv/ \
        kmod/run-tests.sh molecule/ testhosts/ collections/ \
        library requirements.yml; do
        if grep -q "^$never" <<<"$listing"; then echo "must not be in the tarball: $never"; return 1; fi
    done
    ansible-galaxy collection install --force -p "$inst" "${tarball[0]}" || return 1
    local py=$VENV/bin/python
    ANSIBLE_COLLECTIONS_PATH=$inst ansible localhost -e "ansible_python_interpreter=$py" \
        -m fwcluster.cluster.cluster_info | tee "$TMP/info.out"
    grep -q '"running": false' "$TMP/info.out" || return 1
    ANSIBLE_COLLECTIONS_PATH=$inst ansible localhost -e "ansible_python_interpreter=$py" \
        -m ansible.builtin.debug -a "msg={{ '01:00:5e:7f:00:01' | fwcluster.cluster.is_multicast_mac }}" |
        tee "$TMP/filter.out"
    grep -q '"msg": true' "$TMP/filter.out" || return 1
    ANSIBLE_COLLECTIONS_PATH=$inst ansible-doc fwcluster.cluster.member >/dev/null || return 1
    agent_from_tarball "$inst" || return 1
    clone_layout
}

# The installed tarball carries the agent: the role's controller-side build,
# run outside the clone (no ansible.cfg, no agent/ source) with the package
# index unreachable, packs a wheelhouse with the agent and its pinned
# dependencies from the collection alone.
agent_from_tarball() {
    local inst=$1 wh=$TMP/wheelhouse-from-tarball
    (unset ANSIBLE_CONFIG && cd "$TMP" && ANSIBLE_COLLECTIONS_PATH="$inst" \
        PIP_INDEX_URL=http://127.0.0.1:9/ PIP_NO_INDEX=1 \
        ansible localhost -i localhost, -c local -e "ansible_python_interpreter=$VENV/bin/python" \
        -e "availability_manager_wheelhouse=$wh" -m ansible.builtin.include_role \
        -a "name=fwcluster.cluster.availability_manager tasks_from=build_wheelhouse") || return 1
    local packed
    packed=$(tar -tf "$wh.tar") || return 1
    echo "$packed"
    for must in availability_manager- cryptography- pyroute2- pyyaml- prometheus_client-; do
        grep -q "^\./$must.*\.whl$" <<<"$packed" ||
            { echo "the wheelhouse from the installed tarball lacks $must*.whl"; return 1; }
    done
}

# The clone's top level: requirements.yml installs the collection from this
# directory with no network (the Galaxy server given is a closed loopback
# port, so any attempt to reach one fails), and library/ gives the modules
# their short names through ansible.cfg.
clone_layout() {
    local req=$TMP/from-requirements
    ansible-galaxy collection install --force -r requirements.yml -p "$req" \
        --server http://127.0.0.1:9/ || return 1
    [ -f "$req/ansible_collections/fwcluster/cluster/MANIFEST.json" ] ||
        { echo "requirements.yml did not install fwcluster.cluster"; return 1; }
    [ -f "$req/ansible_collections/fwcluster/cluster/plugins/modules/member.py" ] || return 1
    ansible-doc -t module member | grep -q "$REPO/library/member.py" ||
        { echo "library/ does not resolve the short module name member"; return 1; }
}

# ansible-test sanity on the installed copy of the tarball, from its own venv
# (its test requirements, e.g. pylint, are pinned by ansible-test itself and
# must not disturb the project venv). --local: no containers here.
sanity() {
    if [ ! -x "$SANITY_VENV/bin/ansible-test" ]; then
        python3 -m venv "$SANITY_VENV" &&
            "$SANITY_VENV/bin/pip" install -q "$(grep '^ansible-core==' tools/requirements-ansible.txt)" || return 1
    fi
    # ansible-test bootstraps pip in its test venvs with a get-pip.py it
    # downloads from a host not reachable here; put our stand-in where it
    # looks for its cached copy (only if there is no real one).
    local pipv cached
    pipv=$("$SANITY_VENV/bin/python" -c 'import pathlib, re, ansible_test
p = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip=.([0-9.]+).", p.read_text()).group(1).replace(".", "_"))') || return 1
    cached=$HOME/.ansible/test/cache/get_pip_$pipv.py
    if [ ! -f "$cached" ] || grep -q "Stand-in for ansible-test" "$cached"; then
        mkdir -p "$(dirname "$cached")" && cp tests/sanity/get_pip_offline.py "$cached"
    fi
    local inst=$TMP/sanity
    local tarball=("$TMP"/build/fwcluster-cluster-*.tar.gz)
    [ -f "${tarball[0]}" ] || { echo "no tarball: the build step failed"; return 1; }
    ansible-galaxy collection install --force -p "$inst" "${tarball[0]}" >/dev/null || return 1
    (cd "$inst/ansible_collections/fwcluster/cluster" &&
        PATH="$SANITY_VENV/bin:$PATH" ansible-test sanity --local --python 3.11 --requirements)
}

scenario() {
    [ "$(id -u)" -eq 0 ] || { echo "molecule scenarios need root (namespaces, nspawn)"; return 1; }
    molecule test -s "$1"
}

export REPO VENV LOGS SANITY_VENV TMP
export -f lint changelog build_and_install agent_from_tarball clone_layout sanity scenario
ensure_tools >"$LOGS/tools.log" 2>&1 || echo "ansible-tests: installing tools failed, see $LOGS/tools.log"
step lint 600 lint
step changelog 120 changelog
step build 300 build_and_install
step sanity 1500 sanity
for s in $SCENARIOS; do
    before=$failed
    step "molecule:$s" 900 scenario "$s"
    # A scenario that failed half-way leaves its hosts as they were then
    # (traffic running, a node drained): the next one, which would reuse them,
    # boots fresh ones instead of failing for the first one's reason.
    if [ "$failed" -gt "$before" ]; then
        "$VENV/bin/python" -m testhosts down >>"$LOGS/cleanup.log" 2>&1 || true
    fi
done

printf '%s\n' "${summary[@]}"
echo "ansible: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
