"""The fixture-free unit-test modules, run again on the MicroPython unix port."""
import glob
import os

import pytest

import mp

# Every host_tests/unit_*.py runs under pytest (CPython) and here on the unix port.
UNIT = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(mp.HERE, "unit_*.py")))


@pytest.mark.parametrize("module", UNIT)
def test_unit_module_on_unix_port(module):
    r = mp.run([os.path.join(mp.HERE, "mp_runner.py"), module], extra_path=(mp.HERE,))
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout and "PASS" in r.stdout, r.stdout
