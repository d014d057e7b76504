#!/usr/bin/env bash
# Builds the collection tarball with the agent inside: the role's wheelhouse
# (the agent's wheel built from agent/, its dependencies fetched from the
# role's pinned, hashed list for Debian 12's Python) is packed into
# roles/availability_manager/files/agent-wheelhouse.tar for the length of
# `ansible-galaxy collection build`, then removed from the clone again. An
# installed tarball then deploys a cluster with no clone and no package index
# (the role uses that wheelhouse when it finds no agent source).
# Needs the package index here, at build time only.
#
#   tools/build-collection.sh [OUTPUT_DIR]    (default: the current directory)
set -euo pipefail
OUT=$(realpath "${1:-.}")
cd "$(dirname "$0")/.."
REPO=$PWD
BUNDLE=$REPO/roles/availability_manager/files/agent-wheelhouse.tar
WORK=$(mktemp -d /tmp/fwcluster-bundle.XXXXXX)
trap 'rm -rf "$WORK" "$BUNDLE"' EXIT
export PATH="$REPO/.venv/bin:$PATH" ANSIBLE_CONFIG=$REPO/ansible.cfg ANSIBLE_NOCOLOR=1

ansible-playbook -i localhost, -e "ansible_python_interpreter=$REPO/.venv/bin/python" \
    -e "availability_manager_wheelhouse=$WORK/wheelhouse" tools/bundle_agent.yml
cp "$WORK/wheelhouse.tar" "$BUNDLE"
mkdir -p "$OUT"
ansible-galaxy collection build --force --output-path "$OUT" .
