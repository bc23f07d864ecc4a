"""The running daemon: folders, lock, watcher, intake and worker wired together; signals;
systemd; health; metrics; the stuck and silence watches.

Signal handlers only set events. The main thread waits on those events and, between
them, tells systemd how things are (``READY=1``, ``STATUS=``, ``WATCHDOG=1`` while the
watcher and worker threads are alive, ``STOPPING=1``). SIGTERM/SIGINT: nothing new is
taken, the worker stops at its next checkpoint (an upload in progress is cut off; the
journal says POSTING, and the next start looks in Canvas before posting again), and the
process exits 0 within 10 seconds. SIGHUP reopens the log file and re-reads the config
(``reload``: what can change live is applied, one log line per changed key).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from loguru import logger

from sisdropd import __version__, config, importer, logs, recovery, reload, startup
from sisdropd.canvas import client_for
from sisdropd.config import Config, ConfigError
from sisdropd.folders import Folders, pause_flag
from sisdropd.intake import Intake
from sisdropd.logs import reopen
from sisdropd.metrics import Metrics
from sisdropd.notify import Notifier
from sisdropd.watcher import Watcher
from sisdropd.worker import Worker

STOP_GRACE = 8.0  # seconds to wait for the threads before exiting anyway (< systemd's 10)


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket, if there is one. Never raises."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


class Daemon:
    """sisdropd run: everything the daemon holds, started by ``run`` until ``stop`` is set."""

    def __init__(self, cfg: Config, token: str, *, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.hup = threading.Event()
        self.tick = threading.Event()  # SIGUSR1 from an operator command: act now
        self.paused = threading.Event()
        self.folders = Folders.of(cfg)
        startup.make_folders(cfg, self.folders)  # each problem an errors.StartupError, one line
        self._lock = startup.take_lock(cfg, self.folders.state_dir)
        self.journal = startup.open_journal(cfg, self.folders.state_dir)
        self.client = client_for(cfg, token, stop=self.stop)
        self.notifier = Notifier(cfg.notify, ca_bundle=cfg.canvas.ca_bundle)
        self.metrics = Metrics(cfg.metrics.textfile)
        self.worker = Worker(cfg, self.journal, self.client, self.folders, stop=self.stop, notifier=self.notifier)
        self.worker_thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        self.intake = Intake(cfg, self.journal, self.folders)
        self._stuck_notified: set[tuple[int, int]] = set()  # (record, import) alerted as stuck
        self._stale: float | None = None  # when the alerted silence began, while it lasts
        self.started = time.time()
        if pause_flag(self.folders.state_dir).exists():
            self.paused.set()
        w = cfg.watch
        self.watcher = Watcher(
            self.folders.inbox, self.intake, settle_seconds=w.settle_seconds, polling=w.polling,
            rescan_interval=w.rescan_interval, paused=self.paused.is_set, on_taken=self.worker.wake.set,
        )

    def request_stop(self) -> None:
        """Stop at the next checkpoint (what SIGTERM does); safe from any thread."""
        self.stop.set()
        self.tick.set()

    def install_signals(self) -> None:
        def on_stop(_signum: int, _frame: object) -> None:
            self.request_stop()

        def on_hup(_signum: int, _frame: object) -> None:
            self.hup.set()
            self.tick.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, lambda *_: self.tick.set())

    def run(self) -> int:
        """Run until ``stop`` is set; returns the exit status (0)."""
        f = self.folders
        logger.info(
            "sisdropd {} starting: inbox {}, Canvas {} account {}, import {}",
            __version__, f.inbox, self.cfg.canvas.base_url, self.cfg.canvas.account_id, dict(self.cfg.import_params),
        )
        recovery.recover(self.cfg, self.journal, self.folders, self.client, self.notifier)
        self.worker_thread.start()
        self.watcher.start()
        logger.info("watching {} (settle {:g}s, {})", f.inbox, self.cfg.watch.settle_seconds, "polling" if self.cfg.watch.polling else "inotify")
        if self.paused.is_set():
            logger.warning("paused (sisdropd resume to take new files)")
        sd_notify("READY=1\nSTATUS=watching " + str(f.inbox))
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        ping = usec / 2e6 if usec else 30.0
        last_status = ""
        self.started = time.time()
        while True:
            self.tick.wait(min(ping, 5.0))
            self.tick.clear()
            if self.stop.is_set():
                break
            self.operator_requests()
            if self.hup.is_set():
                self.hup.clear()
                reopen()
                self.reload()
            status = self.worker.snapshot()
            if status != last_status:
                sd_notify("STATUS=" + status)
                last_status = status
            if usec and self.healthy():
                sd_notify("WATCHDOG=1")
            self.watch_stuck()
            self.publish()
        return self.shutdown()

    def reload(self) -> None:
        """Re-read the config file (SIGHUP): log each changed key, apply the live ones.

        An invalid file is one error line, and the running config stays.
        """
        path = self.cfg.source
        try:
            new = config.load(path)
        except ConfigError as e:
            logger.error("reload: {} is invalid; keeping the running config: {}", path, "; ".join(e.problems))
            return
        found = reload.changes(self.cfg, new)
        if not found:
            logger.info("reload: {}: no change", path)
            return
        for change in found:
            (logger.info if change.live else logger.warning)("reload: {}", reload.describe(change))
        self.apply(reload.merged(self.cfg, new))

    def apply(self, cfg: Config) -> None:
        """Run with ``cfg`` from now on (keys that need a restart must be as they were)."""
        old, self.cfg = self.cfg, cfg
        self.worker.cfg = self.worker.finisher.cfg = self.intake.cfg = cfg
        self.intake.extensions, self.intake.marker = cfg.watch.extensions, cfg.watch.marker
        self.watcher.settle, self.watcher.rescan_interval = cfg.watch.settle_seconds, cfg.watch.rescan_interval
        self.notifier.reconfigure(cfg.notify)
        if (old.log.level, old.log.format) != (cfg.log.level, cfg.log.format):
            logs.relevel(cfg.log.level, cfg.log.format)
        self.watcher.poke()

    def operator_requests(self) -> None:
        """Log each operator command since the last tick, follow pause/resume, wake the threads."""
        for rid, command, name, who, result in self.journal.unlogged_requests():
            logger.bind(file=name).info("operator {} asked to {}: {}", who, command, result)
            self.journal.mark_logged(rid)
        now_paused = pause_flag(self.folders.state_dir).exists()
        if now_paused != self.paused.is_set():
            (self.paused.set if now_paused else self.paused.clear)()
            logger.warning("paused: no new files are taken") if now_paused else logger.info("resumed: taking new files")
        self.worker.wake.set()
        self.watcher.poke()
        self.watch_silence()

    def watch_silence(self) -> None:
        """[guard] max_silence: one error (and a "stale" alert) when no file came for that long."""
        limit = self.cfg.guard.max_silence
        if limit <= 0:
            return
        last = max(self.journal.last_taken() or 0.0, self.started)
        silent = time.time() - last
        if self._stale is not None and last > self._stale:
            self._stale = None  # a file came after the alert
            logger.info("files are arriving again")
        elif silent >= limit and self._stale is None:
            self._stale = last
            since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last))
            logger.error("no new file for {:.0f}s (guard.max_silence {:g}s): is the SIS export running?", silent, limit)
            self.notifier.send("stale", {"file": None, "import_id": None, "state": None, "reason": f"no new file since {since}", "silent_seconds": round(silent)})

    def watch_stuck(self) -> None:
        """Warn (and notify "stuck") once when an import runs longer than ``stuck_after``, or a
        file whose post lost its answer waits that long for a look-alike import to decide."""
        rec = self.worker.in_flight()
        if rec is None or not rec.post_started:
            return
        target = rec.import_id or rec.waiting_for
        if target is None or (rec.id, target) in self._stuck_notified:
            return
        running = time.time() - rec.post_started
        if running < self.cfg.notify.stuck_after:
            return
        self._stuck_notified.add((rec.id, target))
        log = logger.bind(file=rec.original_name, import_id=rec.import_id)
        if rec.import_id is None:
            reason = (
                f"waiting for {running:.0f}s for import {target}, which lists no files yet and may be this file's "
                f"post: it is not posted again meanwhile (sisdropd discard {rec.original_name} gives up on it)"
            )
            log.warning("{} (notify.stuck_after {:g}s)", reason, self.cfg.notify.stuck_after)
        else:
            reason = f"running for {running:.0f}s"
            log.warning("import still {} after {:.0f}s (notify.stuck_after {:g}s)", rec.workflow_state, running, self.cfg.notify.stuck_after)
        self.notifier.send(
            "stuck",
            {"file": rec.original_name, "import_id": rec.import_id, "waiting_for": rec.waiting_for,
             "state": rec.workflow_state, "reason": reason, "running_seconds": round(running)},
        )

    def publish(self) -> None:
        """Refresh the metrics from the journal and the threads, and write the textfile."""
        if not self.cfg.metrics.textfile:
            return
        m = self.metrics
        by_state, _ = self.journal.totals()
        # Counters from events (entering an outcome), never from current states: a retry or
        # a release must not make one fall.
        outcomes, ended = self.journal.outcome_totals()
        for outcome in ("done", "failed", "held", "lost"):
            m.set("sisdropd_files_total", outcomes.get(outcome, 0), {"outcome": outcome})
        for ws, n in ended.items():
            if ws in importer.FINAL_STATES:
                m.set("sisdropd_imports_total", n, {"state": ws})
        for cause, n in self.client.retries.items():
            m.set("sisdropd_retries_total", n, {"cause": cause})
        m.set("sisdropd_notifications_failed_total", self.notifier.failures)
        m.set("sisdropd_queue_length", by_state.get("queued", 0))
        m.set("sisdropd_held_files", by_state.get("held", 0))
        m.set("sisdropd_paused", 1 if self.paused.is_set() else 0)
        rec = self.worker.in_flight()
        running = time.time() - rec.post_started if rec is not None and rec.post_started and rec.import_id else 0
        m.set("sisdropd_current_import_seconds", round(running, 1))
        last = self.journal.last_success()
        if last:
            m.set("sisdropd_last_success_timestamp_seconds", round(last, 3))
        m.write()

    def healthy(self) -> bool:
        """The threads are alive and the worker is not wedged (it wakes at least every 5 s)."""
        busy = self.worker.current is not None  # a long upload or poll is not a hang
        return self.worker_thread.is_alive() and self.watcher.alive() and (busy or time.monotonic() - self.worker.last_step < 60)

    def shutdown(self) -> int:
        sd_notify("STOPPING=1")
        logger.info("stopping: no new files are taken; the import in flight resumes at the next start")
        self.stop.set()
        deadline = time.monotonic() + STOP_GRACE
        self.watcher.stop()
        self.worker.wake.set()
        self.worker_thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.metrics:
            self.publish()
            self.metrics.set("sisdropd_up", 0)
            self.metrics.write()
        self.notifier.close(timeout=max(0.1, deadline - time.monotonic()))
        if self.worker_thread.is_alive():
            logger.warning("the worker did not stop in time; exiting anyway (the journal has its place)")
            return 0
        self.client.close()
        self.journal.close()
        logger.info("stopped")
        return 0
