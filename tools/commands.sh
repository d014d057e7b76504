# Sourced by the installers: the area's Debian packages and the check that its
# commands are there, both from tools/commands.tsv (the one table of
# command -> package -> area).
COMMANDS_TABLE=${COMMANDS_TABLE:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/commands.tsv"}

# commands_rows AREA: "command package" for each row whose areas include AREA.
commands_rows() {
    awk -F'\t' -v area="$1" '
        /^#/ || NF < 3 { next }
        { n = split($3, a, ","); for (i = 1; i <= n; i++) if (a[i] == area) print $1, $2 }
    ' "$COMMANDS_TABLE"
}

# commands_packages AREA: the Debian packages of AREA, once each (pip ones left out).
commands_packages() {
    commands_rows "$1" | awk '$2 !~ /^pip:/ && !seen[$2]++ { print $2 }'
}

# commands_missing_packages PACKAGE...: those not installed.
commands_missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# commands_check AREA [DIR...]: every command of AREA is on PATH (plus the sbin
# directories and the DIRs given, e.g. a virtualenv's bin); otherwise name each
# missing command and its package, and fail.
commands_check() {
    local area=$1 cmd pkg bad=0
    shift
    local path=$PATH:/usr/local/sbin:/usr/sbin:/sbin
    for dir in "$@"; do path=$dir:$path; done
    while read -r cmd pkg; do
        if ! PATH=$path command -v "$cmd" >/dev/null; then
            echo "$area: command not found after installing: $cmd (package $pkg, tools/commands.tsv)" >&2
            bad=1
        fi
    done < <(commands_rows "$area")
    return $bad
}
