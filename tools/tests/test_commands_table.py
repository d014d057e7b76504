"""tools/commands.tsv names every external command the project runs, with the
Debian package and the installer area that provide it (issue 11: a fresh
machine failed on `modprobe`, which nothing installed)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import command_scan
import pytest

from testhosts import rootfs

ROOT = command_scan.ROOT
AREAS = {"base", "bench", "kmod", "testhost", "essential", "optional"}
# Debian 12's Essential: yes packages (dpkg-query -W -f='${Package} ${Essential}\n'
# on a fresh machine): present everywhere, so their commands need no installer.
ESSENTIAL = {
    "base-files", "base-passwd", "bash", "bsdutils", "coreutils", "dash", "debianutils",
    "diffutils", "dpkg", "findutils", "grep", "gzip", "hostname", "init-system-helpers",
    "libc-bin", "login", "ncurses-base", "ncurses-bin", "perl-base", "sed",
    "sysvinit-utils", "tar", "util-linux",
}  # fmt: skip


@pytest.fixture(scope="module")
def table() -> dict[str, command_scan.Entry]:
    return command_scan.read_table()


def test_every_command_the_tree_runs_is_in_the_table(table):
    uses = command_scan.scan_tree()
    # The scan must see the well-known ones, or it is not reading the tree.
    seen = {u.command for u in uses}
    assert {"ip", "nft", "conntrack", "modprobe", "iperf3", "mmdebstrap", "vng"} <= seen
    missing = command_scan.missing_commands(uses, table)
    assert not missing, (
        "add to tools/commands.tsv (command, Debian package, area): "
        + "; ".join(
            f"{cmd} (run at {', '.join(where[:3])})"
            for cmd, where in sorted(missing.items())
        )
    )


def test_a_new_subprocess_command_without_a_table_entry_is_reported(table):
    source = textwrap.dedent(
        """
        import subprocess
        from fwcluster_lab.netns import in_ns, run
        subprocess.run(["somecmd", "--flag"], check=True)
        run(in_ns("fwt-fw1", ["othercmd", "-x"]))
        argv = ["thirdcmd"] + extra
        sh("fourthcmd", "link")
        subprocess.run(["ip", "link"])  # in the table
        pytest.mark.parametrize("x", ["notacommand"])  # not a command line
        """
    )
    uses = command_scan.scan_python(source, "snippet.py")
    missing = command_scan.missing_commands(uses, table)
    assert set(missing) == {"somecmd", "othercmd", "thirdcmd", "fourthcmd"}
    assert missing["somecmd"] == ["snippet.py:4"]


def test_shell_and_makefile_commands_are_read(table):
    script = textwrap.dedent(
        """\
        #!/bin/bash
        set -eu  # a builtin
        helper() { echo "$(newcmd1 --version)"; }
        if ! timeout 30 newcmd2 -q 2>/dev/null | grep -q x; then helper; fi
        pkgs=(notacmd1
              notacmd2)
        ip netns exec fwt-fw1 newcmd3 \\
            --long
        cat <<'EOF'
        notacmd3 inside a heredoc
        EOF
        for p in notacmd4; do echo "$p"; done
        """
    )
    missing = command_scan.missing_commands(
        command_scan.scan_shell(script, "t.sh"), table
    )
    assert missing == {
        "newcmd1": ["t.sh:3"],
        "newcmd2": ["t.sh:4"],
        "newcmd3": ["t.sh:7"],
    }
    makefile = (
        "X := 1\n.PHONY: a \\\n\tb\na: b\n\t@newcmd4 $(X)\n\t$(VENV)/bin/ruff check\n"
    )
    missing = command_scan.missing_commands(
        command_scan.scan_makefile(makefile, "M"), table
    )
    assert missing == {"newcmd4": ["M:5"]}


def test_the_table_is_well_formed(table):
    for entry in table.values():
        assert set(entry.areas) <= AREAS, entry
        if "essential" in entry.areas:
            assert entry.areas == ("essential",) and entry.package in ESSENTIAL, entry
        else:
            assert entry.package not in ESSENTIAL, (
                f"{entry}: an Essential package: area essential"
            )


def test_the_test_hosts_root_carries_the_testhost_commands(table):
    wanted = {e.package for e in table.values() if "testhost" in e.areas}
    assert wanted - set(rootfs.PACKAGES) == set()


def _installer_lib(
    table_text: str, tmp_path: Path, script: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "commands.tsv"
    path.write_text(table_text)
    return subprocess.run(
        ["bash", "-c", f"source {ROOT / 'tools' / 'commands.sh'}; {script}"],
        capture_output=True,
        text=True,
        env={"COMMANDS_TABLE": str(path), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_installers_take_their_packages_from_the_table(tmp_path):
    rows = "# comment\nip\tiproute2\tbase,kmod\nss\tiproute2\tbase\nvng\tpip:virtme-ng\tkmod\n"
    done = _installer_lib(
        rows, tmp_path, "commands_packages base; echo --; commands_packages kmod"
    )
    assert done.stdout.split() == ["iproute2", "--", "iproute2"]


def test_the_installer_check_names_a_missing_command_and_its_package(tmp_path):
    rows = "bash\tbash\tbase\nnosuchcmd-fw\tnosuchpkg-fw\tbase\n"
    done = _installer_lib(rows, tmp_path, "commands_check base")
    assert done.returncode == 1
    assert "nosuchcmd-fw (package nosuchpkg-fw" in done.stderr
    assert "bash" not in done.stderr
