"""Stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test bootstraps pip in the virtualenvs of some sanity tests with a
get-pip.py it downloads from ci-files.testing.ansible.com, which is not
reachable here. This does the same job with the pip wheel bundled with
Python (ensurepip): run that pip to install what ansible-test asks for (a
pinned pip, from the package index). tools/ansible-tests.sh puts it where
ansible-test looks for its cached copy, only when no real one is there.
"""

import glob
import os
import sys

import ensurepip

# Options only get-pip.py understands; plain pip would reject them.
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main():
    bundled = os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")
    wheels = sorted(glob.glob(os.path.join(bundled, "pip-*.whl")))
    if not wheels:
        sys.exit("no bundled pip wheel in %s" % bundled)
    sys.path.insert(0, wheels[-1])
    from pip._internal.cli.main import main as pip_main

    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    sys.exit(pip_main(["install", "--disable-pip-version-check", *args]))


if __name__ == "__main__":
    main()
