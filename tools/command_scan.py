"""Find the external commands the project runs, to check each has an installer.

What is read (best effort, by design a little generous: a name found that is
not a command only costs an allowlist line, a command missed costs a red
`make test` on a fresh machine):

- Python: list or tuple literals whose first element is a string constant,
  passed to a subprocess call or to one of the project's own run helpers
  (RUNNERS), assigned to a variable named like a command line (ARGV_NAMES), or
  returned by a helper that builds one (`in_ns` returns ["ip", "netns", ...]);
  the first string argument of the varargs helpers (`sh("ip", "link", ...)`);
  the string given to `shutil.which`.
- Shell scripts and Makefile recipes: the first word of every simple command
  (after `;`, `&&`, `||`, `|`, `$(`, `then`, `do`, ...), and the command a
  wrapper runs (`timeout 30 vng ...`, `flock F cmd`, `ip netns exec NS cmd`).

Not read: command lines inside Python strings (`"modprobe x && insmod y"` given
to a shell in a guest), heredocs, and commands named through variables. A path
(`.venv/bin/ruff`, `$VENV/bin/pip`) is the project's own file, not checked;
an absolute system path (`/usr/sbin/conntrackd`) counts as its base name.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Callables whose list argument is a command line: the subprocess API and the
# project's helpers that run or wrap one (lab/fwcluster_lab/netns.py run and
# in_ns, agent nftables._run, bench ns_exec, ...).
RUNNERS = frozenset(
    {
        "run",
        "Popen",
        "check_output",
        "check_call",
        "call",
        "_run",
        "ns_exec",
        "in_ns",
        "start",
        "spawn",
        "execvp",
        "execv",
        "create_subprocess_exec",
    }
)
# Helpers taking the command as separate string arguments: sh("ip", "link", ...).
VARARGS_RUNNERS = frozenset({"sh", "create_subprocess_exec", "execlp"})
ARGV_NAMES = re.compile(r"(argv|cmd|command|full|.*_argv|.*_cmd)$")
COMMAND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*")
SYSTEM_DIRS = ("/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/", "/usr/local/bin/")


@dataclasses.dataclass(frozen=True)
class Use:
    command: str
    path: str  # repository-relative file
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def command_name(word: str) -> str | None:
    """The command a first word names, or None if it is a project path or not a name."""
    for prefix in SYSTEM_DIRS:
        if word.startswith(prefix):
            word = word[len(prefix) :]
            break
    if COMMAND_NAME.fullmatch(word):
        return word
    return None


# --- Python -----------------------------------------------------------------------------


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _is_command_line(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """A list literal is a command line if where it goes says so."""
    parent = parents.get(node)
    # Through `[...] + rest`, `*[...]`, `[...] if c else [...]`.
    while isinstance(parent, (ast.BinOp, ast.Starred, ast.IfExp)):
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Call):
        return _callee(parent) in RUNNERS
    if isinstance(parent, ast.keyword):
        call = parents.get(parent)
        return (
            parent.arg == "args"
            and isinstance(call, ast.Call)
            and _callee(call) in RUNNERS
        )
    if isinstance(parent, ast.Assign):
        return any(
            isinstance(t, ast.Name) and ARGV_NAMES.fullmatch(t.id)
            for t in parent.targets
        )
    if isinstance(parent, ast.AnnAssign):
        return isinstance(parent.target, ast.Name) and bool(
            ARGV_NAMES.fullmatch(parent.target.id)
        )
    if isinstance(parent, ast.Return):
        func = parent
        while func is not None and not isinstance(
            func, (ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            func = parents.get(func)  # type: ignore[assignment]
        return func is not None and func.name in RUNNERS
    return False


def _first_string(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def scan_python(source: str, path: str) -> list[Use]:
    tree = ast.parse(source, filename=path)
    parents = {
        child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
    }
    uses: list[Use] = []

    def add(word: str | None, node: ast.AST) -> None:
        name = command_name(word) if word is not None else None
        if name is not None:
            uses.append(Use(name, path, getattr(node, "lineno", 0)))

    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = _first_string(node.elts[0])
            if first is not None and _is_command_line(node, parents):
                add(first, node)
        elif isinstance(node, ast.Call) and node.args:
            callee = _callee(node)
            if callee in VARARGS_RUNNERS or callee == "which":
                add(_first_string(node.args[0]), node)
    return uses


# --- Shell and Makefile -----------------------------------------------------------------

SHELL_KEYWORDS = frozenset(
    [
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "for",
        "while",
        "until",
        "do",
        "done",
        "case",
        "esac",
        "in",
        "function",
        "select",
        "time",
        "!",
        "{",
        "}",
        "[[",
        "]]",
        "((",
        "))",
    ]
)
# Wrappers: the command they run comes after their options (and fixed operands).
WRAPPER_OPERANDS = {
    "exec": 0,
    "command": 0,
    "nice": 0,
    "env": 0,
    "xargs": 0,
    "sudo": 0,
    "nohup": 0,
    "setsid": 0,
    "timeout": 1,
    "flock": 1,
    "chrt": 1,
    "taskset": 1,
    "unshare": 0,
    "nsenter": 0,
}
_SPLIT = re.compile(r"\$\(|`|&&|\|\||[;|&(){}]")


def _words(segment: str) -> list[str]:
    try:
        return shlex.split(segment, comments=False, posix=True)
    except ValueError:
        return segment.split()


def _command_of(words: list[str]) -> str | None:
    """The command a simple command runs, looking through keywords and wrappers."""
    i = 0
    while i < len(words):
        word = words[i]
        if word in SHELL_KEYWORDS or re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=.*", word
        ):
            i += 1  # keyword or assignment prefix (X=1 cmd)
            continue
        if word in (
            "local",
            "declare",
            "export",
            "readonly",
            "return",
            "echo",
            "printf",
        ):
            return word
        if word in WRAPPER_OPERANDS:
            i += 1
            while i < len(words) and words[i].startswith("-"):
                # options with a separate value (timeout --kill-after 30) are rare here
                i += 1
            i += WRAPPER_OPERANDS[word]
            if word == "env":
                while i < len(words) and "=" in words[i]:
                    i += 1
            if i >= len(words):
                return word
            continue
        if (
            word == "ip"
            and words[i + 1 : i + 3] == ["netns", "exec"]
            and len(words) > i + 4
        ):
            return _command_of(words[i + 4 :]) if command_name(words[i + 4]) else "ip"
        return word
    return None


def _blank(match: re.Match[str]) -> str:
    """A removed span, keeping its newlines so line numbers still hold."""
    return " Q " + "\n" * match.group(0).count("\n")


def _prepare(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The script with comments, heredoc bodies, quoted strings, arithmetic and
    array assignments blanked out (line numbers kept), and the command
    substitutions found inside double quotes with their line numbers."""
    lines, heredoc_end = [], None
    for raw in text.splitlines():
        if heredoc_end is not None:
            lines.append("")
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        marker = re.search(r"<<-?\s*['\"]?([A-Za-z_]+)['\"]?", raw)
        if marker:
            heredoc_end = marker.group(1)
        lines.append(raw)
    text = "\n".join(lines)
    out: list[str] = []
    inner: list[tuple[int, str]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "#" and (i == 0 or text[i - 1] in " \t\n;"):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif ch in "'\"":
            j = i + 1
            while j < len(text) and text[j] != ch:
                j += 2 if ch == '"' and text[j] == "\\" else 1
            body = text[i + 1 : j]
            if ch == '"':
                line = text.count("\n", 0, i) + 1
                inner += [(line, sub) for sub in re.findall(r"\$\(([^()]*)\)", body)]
            out.append(" Q " + "\n" * body.count("\n"))
            i = j + 1
        elif ch == "\\" and i + 1 < len(text):
            # A continuation: joined later, the newline kept for line numbers.
            out.append(" \x01\n" if text[i + 1] == "\n" else text[i : i + 2])
            i += 2
        else:
            out.append(ch)
            i += 1
    text = "".join(out)
    text = re.sub(r"\$\(\(.*?\)\)|\(\(.*?\)\)", _blank, text, flags=re.DOTALL)
    text = re.sub(r"\b[A-Za-z_]\w*\+?=\([^)]*\)", _blank, text, flags=re.DOTALL)
    return text, inner


def shell_commands(line: str) -> list[str]:
    """The commands one (prepared) line runs."""
    found = []
    # `for x in ...` lists and case patterns ("a|b)") are not commands.
    if re.match(r"\s*(for|select)\s", line):
        line = line.split(";", 1)[1] if ";" in line else ""
    line = re.sub(r"^\s*[^\s()]+\)", " ", line)
    for segment in _SPLIT.split(line):
        # Redirections are not commands: drop `>file`, `2>&1`, `<in`.
        segment = re.sub(r"\d*[<>]+&?\s*\S*", " ", segment)
        command = _command_of(_words(segment))
        if command is not None and command != "Q":
            found.append(command)
    return found


def _shell_functions(text: str) -> set[str]:
    return set(
        re.findall(r"^\s*(?:function\s+)?([A-Za-z_][\w-]*)\s*\(\)", text, re.MULTILINE)
    )


def scan_shell(
    text: str, path: str, library: frozenset[str] = frozenset()
) -> list[Use]:
    """`library`: functions of the project's sourced scripts (tools/commands.sh)."""
    functions = _shell_functions(text) | library
    prepared, inner = _prepare(text)
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(prepared.split("\n"), 1):
        start = start if pending else number
        if line.endswith("\x01"):
            pending += line[:-1]
            continue
        lines.append((start, pending + line))
        pending = ""
    lines += [(n, _prepare(sub)[0].replace("\x01\n", "")) for n, sub in inner]
    uses = []
    for number, line in lines:
        for word in shell_commands(line):
            name = command_name(word)
            if name is not None and name not in functions:
                uses.append(Use(name, path, number))
    return uses


def makefile_recipes(text: str) -> str:
    """The recipe lines of a Makefile as shell text (make variables blanked out)."""
    lines, in_rule, continued = [], False, False
    for line in text.splitlines():  # one line out per line in, so line numbers hold
        body = ""
        if line.startswith("\t") and in_rule and not continued:
            body = re.sub(
                r"\$\([^)]*\)/\S*|\$\([^)]*\)", "$VAR", line[1:].lstrip("@-+")
            )
        elif not continued and line.strip() and not line.startswith("#"):
            # A rule line starts a recipe; a variable or .PHONY line does not.
            in_rule = bool(re.match(r"[^\t=]*:([^=]|$)", line)) and not line.startswith(
                "."
            )
        lines.append(body)
        continued = line.endswith("\\") and not line.startswith("\t")
    return "\n".join(lines)


# Ansible tasks: `argv: [cmd, ...]`, `argv:` then `- cmd`, `command: cmd ...`.
_YAML_COMMAND = re.compile(
    r"^\s*(?:-\s+)?(?:(?:ansible\.builtin\.)?(?:command|shell)|cmd):\s+['\"]?([^\s'\"{\[]+)"
    r"|^\s*argv:\s*\[\s*['\"]?([^\s,'\"{]+)"
)


def scan_yaml(text: str, path: str) -> list[Use]:
    uses = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        match = _YAML_COMMAND.match(line)
        word = (match.group(1) or match.group(2)) if match else None
        if re.match(r"\s*argv:\s*$", line) and number < len(lines):
            item = re.match(r"\s*-\s+['\"]?([^\s'\"{]+)", lines[number])
            word = item.group(1) if item else None
        name = command_name(word) if word else None
        if name is not None:
            uses.append(Use(name, path, number))
    return uses


def scan_makefile(text: str, path: str) -> list[Use]:
    return scan_shell(makefile_recipes(text), path)


# --- The tree ---------------------------------------------------------------------------

# Everything else is read, including what runs on the cluster nodes and test
# hosts (roles, the agent): the test host root must carry those commands too.
SKIP_PARTS = ("docs/",)


def tracked_files(root: Path = ROOT) -> list[str]:
    """The project's files: tracked, and new ones not yet added (not ignored ones)."""
    out = subprocess.run(
        [
            "git",
            "-C",
            str(root),
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [p for p in out.stdout.splitlines() if not p.startswith(SKIP_PARTS)]


def _is_shell(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    try:
        with path.open("rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and (
        b"bash" in first or first.rstrip().endswith(b"/sh")
    )


def scan_tree(root: Path = ROOT) -> list[Use]:
    uses: list[Use] = []
    shells = [rel for rel in tracked_files(root) if _is_shell(root / rel)]
    library = frozenset(
        f for rel in shells for f in _shell_functions((root / rel).read_text())
    )
    for rel in tracked_files(root):
        path = root / rel
        if not path.is_file():
            continue
        if rel.endswith(".py"):
            uses += scan_python(path.read_text(), rel)
        elif rel.endswith((".yml", ".yaml")) and rel.startswith(
            ("roles/", "playbooks/")
        ):
            uses += scan_yaml(path.read_text(), rel)
        elif Path(rel).name == "Makefile":
            uses += scan_makefile(path.read_text(), rel)
        elif rel in shells:
            uses += scan_shell(path.read_text(), rel, library)
    return uses


# --- The table --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    command: str
    package: str
    areas: tuple[str, ...]


def read_table(path: Path = ROOT / "tools" / "commands.tsv") -> dict[str, Entry]:
    table: dict[str, Entry] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(
                f"{path}:{number}: want command<TAB>package<TAB>areas: {line!r}"
            )
        command, package, areas = fields[:3]
        if command in table:
            raise ValueError(f"{path}:{number}: {command} listed twice")
        table[command] = Entry(command, package, tuple(areas.split(",")))
    return table


# Shell builtins and keywords: not commands to install.
SHELL_BUILTINS = frozenset(
    [
        "cd",
        "echo",
        "exit",
        "export",
        "local",
        "printf",
        "pwd",
        "read",
        "return",
        "set",
        "shift",
        "trap",
        "true",
        "false",
        "continue",
        "break",
        "wait",
        "eval",
        "source",
        "unset",
        "command",
        "type",
        "test",
        "[",
        "exec",
        "declare",
        "readonly",
        "mapfile",
    ]
)
# First elements that the scan takes for commands but are not (each says why).
NOT_COMMANDS = {
    # run(module, ["status", "--json"]): arguments given to the project's clusterctl
    "status": "plugins/module_utils/clusterctl.py",
}


def missing_commands(uses: list[Use], table: dict[str, Entry]) -> dict[str, list[str]]:
    """Command -> where it is run, for each command neither in the table nor a builtin."""
    missing: dict[str, list[str]] = {}
    for use in uses:
        if use.command in table or use.command in SHELL_BUILTINS:
            continue
        if NOT_COMMANDS.get(use.command) == use.path:
            continue
        missing.setdefault(use.command, []).append(use.where())
    return missing
