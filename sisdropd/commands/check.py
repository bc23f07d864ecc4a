"""``sisdropd check``: the config, folders, permissions and the token against Canvas."""

from __future__ import annotations

import argparse
import grp
import os
import sqlite3
import stat
import time
from pathlib import Path

from sisdropd import startup
from sisdropd.canvas import CanvasError, client_for
from sisdropd.commands import say, unreadable
from sisdropd.config import (
    Config,
    ConfigError,
    TokenError,
    load,
    mask_url,
    read_token,
    resolve_path,
)
from sisdropd.errors import StartupError
from sisdropd.folders import Folders, journal_file
from sisdropd.journal import Journal, JournalError
from sisdropd.logs import add_secret
from sisdropd.preflight.params import config_warnings
from sisdropd.proxy import proxy_for


def main(args: argparse.Namespace) -> int:
    return check(resolve_path(args.config))


def check(path: Path) -> int:
    """``sisdropd check``: config, folders, permissions, token, and the token against Canvas."""
    problems: list[str] = []
    try:
        cfg = load(path)
    except ConfigError as e:
        for p in e.problems:
            say(f"problem: config: {p}")
        return 1
    say(f"ok: config {path}")
    for w in config_warnings(cfg.import_params, [r.import_params for r in cfg.rules]):
        say(f"warning: config: {w}")  # an import type Canvas may not have: its answer is a 500
    folders = Folders.of(cfg)
    for name, folder in folders.items():
        probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
        if not folder.exists():
            if os.access(probe, os.W_OK | os.X_OK):
                say(f"ok: {name} {folder} (will be created)")
            else:
                problems.append(f"{name} {folder}: missing, and {probe} is not writable to create it")
        elif not folder.is_dir():
            problems.append(f"{name} {folder}: not a folder")
        elif not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            problems.append(f"{name} {folder}: not readable and writable by this user")
        else:
            say(f"ok: {name} {folder}")
    for w in mode_warnings(cfg, folders):
        say(f"warning: {w}")
    inbox, proc = folders.inbox, folders.processing
    if inbox.exists() and proc.exists() and inbox.stat().st_dev != proc.stat().st_dev:
        problems.append("inbox and processing are on different filesystems (a file could not be taken atomically)")
    if cfg.log.file:
        log = Path(cfg.log.file)
        target = log if log.exists() else next((p for p in log.parents if p.exists()), Path("/"))
        if os.access(target, os.W_OK | (0 if target == log else os.X_OK)):
            say(f"ok: log file {log}")
        else:
            problems.append(f"log.file {log}: {target} is not writable by this user")
    journal_problem = journal_check(folders.state_dir)
    if journal_problem:
        problems.append(journal_problem)
    try:
        startup.check_files(cfg)
    except StartupError as e:
        problems.append(str(e))
    proxy, why = proxy_for(cfg.canvas.base_url, cfg.canvas.proxy)
    say(f"ok: proxy {mask_url(proxy)} (from {why})" if proxy else f"ok: no proxy ({why})")
    try:
        token, where = read_token(cfg)
        add_secret(token)
        say(f"ok: token from {where}")
    except TokenError as e:
        problems.append(f"token: {e}")
        token = ""
    if token:
        c = cfg.canvas
        client = client_for(cfg, token, patience="command")
        try:
            me = client.whoami(deadline=time.time() + c.timeout)
            say(f"ok: Canvas {c.base_url} accepts the token (user {me.get('id')}, {me.get('name')})")
            next(iter(client.list_imports(per_page=1, deadline=time.time() + c.timeout)), None)
            say(f"ok: the token may list SIS imports of account {c.account_id}")
        except CanvasError as e:
            problems.append(f"Canvas: {e.message}")
        finally:
            client.close()
    for p in problems:
        say(f"problem: {p}")
    return 1 if problems else 0


def journal_check(state_dir: Path) -> str | None:
    """The journal, read (never written: ``check`` changes nothing): a problem when it is no
    journal (the advice ``run`` gives, which refuses to start on it) or cannot be read;
    None when it reads or is not made yet (the daemon makes it)."""
    path = journal_file(state_dir)
    try:
        if not path.exists():
            say(f"ok: journal {path} (will be created)")
            return None
        Journal(state_dir, readonly=True).close()
    except JournalError as e:
        return str(e)
    except (OSError, sqlite3.Error) as e:
        return unreadable(path, e)
    say(f"ok: journal {path}")
    return None


INBOX_MODE = 0o3770  # the README's: group-writable, setgid (uploads get the group), sticky
SHOWN = 3  # names shown per warning; the count says the rest


def mode_warnings(cfg: Config, folders: Folders) -> list[str]:
    """What the modes leave open: an inbox the uploaders cannot use safely, and anything in
    our folders (and the log file) that every user of the host may read."""
    out: list[str] = []
    inbox = folders.inbox
    fix = f"apply the README's mode: chgrp <uploaders' group> {inbox} && chmod {INBOX_MODE:o} {inbox}"
    if not inbox.exists():
        out.append(f"inbox {inbox} will be made 0750: uploaders cannot write there until you {fix}")
    elif inbox.is_dir():
        st = inbox.stat()
        mode = stat.S_IMODE(st.st_mode)
        why = []
        if mode & 0o070 != 0o070:
            why.append(f"group {_group(st.st_gid)} (the uploaders) cannot write there")
        if not mode & stat.S_ISGID:
            why.append("without setgid, uploads do not get the folder's group")
        if not mode & stat.S_ISVTX:
            why.append("without the sticky bit, one uploader can delete or replace another's file")
        if why:
            out.append(f"inbox {inbox} is {mode:04o}: {'; '.join(why)}; {fix}")
    for name, folder in folders.items():
        try:
            st = folder.stat()
        except OSError:
            continue
        if st.st_mode & 0o007:
            out.append(f"{name} {folder} is {stat.S_IMODE(st.st_mode):04o}: open to all users; chmod o-rwx {folder}")
        exposed = _world_readable(folder)
        if exposed:
            shown = ", ".join(exposed[:SHOWN]) + (f" and {len(exposed) - SHOWN} more" if len(exposed) > SHOWN else "")
            out.append(f"{name}: {len(exposed)} readable by all users ({shown}): chmod o-rwx on them")
    log = Path(cfg.log.file) if cfg.log.file else None
    if log is not None and log.exists() and log.stat().st_mode & stat.S_IROTH:
        out.append(f"log file {log} is readable by all users: chmod o-r {log}")
    return out


def _world_readable(folder: Path) -> list[str]:
    """Names directly in ``folder`` that other users may read (files) or list (folders)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for e in sorted(entries, key=lambda e: e.name):
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) and st.st_mode & stat.S_IROTH:
            out.append(e.name)
    return out


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
