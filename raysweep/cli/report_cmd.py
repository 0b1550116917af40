"""`raysweep report <experiment> [--watch] [--port N] [--interval S]`: write the experiment's report.html from
what is on disk now; with --watch, serve it on 127.0.0.1 and rewrite it whenever the results change (checked
every interval), the page reloading itself at the same interval. A sweep can be followed from a browser
without the Ray dashboard, also one that runs elsewhere on shared storage.

The server is the standard library's (http.server): one page on the loopback interface, nothing to install.
It serves report.html only, never the rest of the experiment directory (checkpoints, configs).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from raysweep.cli.console import EXIT_OK, BadInput, console
from raysweep.experiment import storage

DEFAULT_PORT = 8365  # near Ray's dashboard (8265), not on it
DEFAULT_INTERVAL_S = 10.0


def _handler(page: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] not in ("/", f"/{page.name}"):
                self.send_error(404, f"only / ({page.name}) is served")
                return
            body = page.read_bytes()  # rewritten by rename: always a whole page
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")  # the reload must fetch the rewritten page
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            pass  # one line per reload would bury the console

    return Handler


class ReportWatcher:
    """Serves `<experiment>/report.html` on 127.0.0.1:`port` (0: any free port) and rewrites it every
    `interval_s` when the experiment's files changed (analysis.report_build.inputs_signature)."""

    def __init__(self, experiment: Path, port: int, interval_s: float, location: str | None = None):
        from analysis.report_build import report_path

        # `location`: the experiment in object storage, `experiment` then its local mirror (pulled each time)
        self.experiment, self.interval_s, self.location = experiment, interval_s, location
        self.page = report_path(experiment)
        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self.page))
        except OSError as exc:
            raise BadInput(f"report --watch: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
                           "choose another --port") from None
        self.server.daemon_threads = True
        self.stopped = threading.Event()
        self.rewrites = 0
        self._signature: tuple | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def rewrite_if_changed(self) -> bool:
        from analysis.report_build import inputs_signature, write_experiment_report

        if self.location:
            storage.pull(self.location)  # only what changed is downloaded
        signature = inputs_signature(self.experiment)
        if signature == self._signature and self.page.is_file():
            return False
        write_experiment_report(self.experiment, refresh_s=self.interval_s)
        self._signature, self.rewrites = signature, self.rewrites + 1
        return True

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.rewrite_if_changed()
            except Exception as exc:  # noqa: BLE001 - a half-written result file: try again next time
                console.print(f"report: not rewritten this time ({type(exc).__name__}: {exc})", markup=False)

    def start(self) -> None:
        try:
            self.rewrite_if_changed()  # not an experiment: ResultsError, and nothing left listening
        except BaseException:
            self.server.server_close()
            raise
        threading.Thread(target=self.server.serve_forever, daemon=True, name="raysweep-report-server").start()
        threading.Thread(target=self._loop, daemon=True, name="raysweep-report-rewrite").start()

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def cmd_report(args) -> int:
    from analysis.load import ResultsError
    from analysis.report_build import write_experiment_report

    location = args.experiment if storage.is_uri(args.experiment) else None
    experiment = storage.mirror_of(location) if location else Path(args.experiment).expanduser()
    interval = float(getattr(args, "interval", None) or DEFAULT_INTERVAL_S)
    if interval <= 0:
        raise BadInput(f"report: --interval must be a positive number of seconds, got {interval:g}")
    try:
        if not getattr(args, "watch", False):
            with storage.opened(location or experiment) as local:  # an object store's copy gets the page too
                written = write_experiment_report(local)
            shown = storage.shown(written, experiment, location) if location else written
            console.print(f"wrote {shown}", markup=False, highlight=False)
            return EXIT_OK
        port = getattr(args, "port", None)
        watcher = ReportWatcher(experiment, DEFAULT_PORT if port is None else int(port), interval, location)
        watcher.start()
    except ResultsError as exc:
        raise BadInput(str(exc)) from None
    console.print(f"serving {watcher.page} at {watcher.url} (rewritten when the results change, checked every "
                  f"{interval:g} s); Ctrl-C to stop", markup=False, highlight=False)
    try:
        while not watcher.stopped.is_set():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return EXIT_OK
