"""Child processes of the host tools and tests: stop them politely, then firmly."""
import subprocess


def stop(proc, sig, timeout=10):
    """Send `sig`, wait up to `timeout` s, then kill. Returns the exit code (None if no proc)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
