"""Boot on the unix port: the crash counter and safe mode."""
import os


def _count(f):
    with open(os.path.join(f.flash, "boot.dat")) as fh:
        return int(fh.read())


def test_a_healthy_run_clears_the_crash_counter(fw):
    f = fw()
    with open(os.path.join(f.flash, "boot.dat"), "w") as fh:
        fh.write("2")  # two boots that never got healthy
    f.start()
    f.wait_log(r"ack: \w+ accepted")
    f.stop()
    assert _count(f) == 0


def test_boots_that_never_get_healthy_end_in_safe_mode(fw):
    from realer_harness import free_port
    f = fw()
    # The cloud is out of reach (nothing listens there): no boot can get healthy.
    f.edit_config(lambda c: c["cloud"].update(api_url="https://localhost:%d" % free_port()))
    for n in (1, 2, 3):
        f.start()
        f.wait_log(r"link: .*HTTPS")  # it tried, and failed
        f.stop(sig=9)  # then the board crashed (or was reset)
        assert _count(f) == n
    f.start()
    line = f.wait_log(r"boot: SAFE MODE")
    assert "3 boots in a row did not get healthy" in line
    f.proc.wait(10)
    assert not any("bootstrap:" in x or "link:" in x for x in f.lines), f.log()
    assert f.output("relay") is False  # at its safe level


def test_a_power_on_starts_the_count_afresh(fw):
    """Power cuts while the network is down are not crashes: no safe mode from them."""
    from realer_harness import free_port
    f = fw()
    f.edit_config(lambda c: c["cloud"].update(api_url="https://localhost:%d" % free_port()))
    for _ in range(5):
        f.start(power_on=True)
        f.wait_log(r"link: .*HTTPS")
        f.stop(sig=9)  # the power goes again
        assert _count(f) == 1
    f.start()  # a reset (not a power-on) counts on from there
    f.wait_log(r"link: .*HTTPS")
    f.stop(sig=9)
    assert _count(f) == 2
