"""Run fixture-free unit-test modules on the MicroPython unix port.

    micropython host_tests/mp_runner.py test_mod_a test_mod_b

Each module's ``test_*`` functions are called in order (async ones through
asyncio.run). Prints one line per test and a closing 'N passed, N failed'.
pytest runs the same modules under CPython; test_on_unix_port.py runs this.
"""
import sys


def main(names):
    import asyncio
    passed = failed = 0
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            try:
                r = fn()
                if r is not None and hasattr(r, "send"):
                    asyncio.run(r)
                    asyncio.new_event_loop()
                passed += 1
                print("PASS %s.%s" % (name, attr))
            except Exception as e:  # noqa: BLE001 - report every failure and go on
                failed += 1
                print("FAIL %s.%s: %r" % (name, attr, e))
                sys.print_exception(e)
    print("unix port: %d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
