import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# tools/command_scan.py and the testhosts package, imported by the tests here.
for path in (ROOT / "tools", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
