"""A wall-clock limit for tests that must not hang (the importer on hostile input)."""
import contextlib
import signal


@contextlib.contextmanager
def time_limit(seconds):
    """Raise TimeoutError if the block runs longer than `seconds` (main thread only, POSIX)."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s (hang?)")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
