"""A dependency-free progress bar for long loops (training, distillation, benchmarks)."""
import sys
import time


class progress:
    """Iterate with a one-line progress bar on stderr: `for batch in progress(batches, "train"):`.

    On a terminal the line redraws in place; elsewhere (CI logs) it prints at most `lines` updates.
    `set(**values)` shows live values such as the loss. With `delay=` seconds, nothing is drawn until
    the loop has run that long (quick calls stay silent; slow ones show where they are).
    """

    def __init__(self, iterable, description="", total=None, stream=None, lines=4, enabled=True, delay=0.0):
        self.iterable, self.description = iterable, description
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.stream = stream or sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lines, self.enabled, self.values, self.delay = lines, enabled, {}, delay

    def set(self, **values):
        self.values.update(values)

    def _draw(self, done, start, final=False):
        elapsed = time.perf_counter() - start
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.values.items())
        if self.total:
            filled = int(20 * done / self.total)
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else 0.0
            line = (f"{self.description} [{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} "
                    f"{elapsed:.1f}s<{eta:.1f}s {shown}")
        else:
            line = f"{self.description} {done} it {elapsed:.1f}s {shown}"
        if self.interactive:
            self.stream.write("\r" + line.ljust(100) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __iter__(self):
        if not self.enabled:
            yield from self.iterable
            return
        start, done = time.perf_counter(), 0
        step = max(1, (self.total or 1) // max(self.lines, 1))
        last = 0.0
        for item in self.iterable:
            yield item
            done += 1
            now = time.perf_counter()
            if now - start < self.delay:
                continue
            if self.interactive and now - last > 0.1:
                self._draw(done, start)
                last = now
            elif not self.interactive and self.total and done % step == 0 and done < self.total:
                self._draw(done, start)
        if time.perf_counter() - start >= self.delay:
            self._draw(done, start, final=True)
