"""`pefthub-server`: `up`, `serve`, `adduser` and every Django manage command, on the running hub's data.

`up` and `migrate` make a hub's data where PEFTHUB_DATA_DIR says (default ./.pefthub).
Every other command that touches data works on an existing hub's, found as:

1. PEFTHUB_DATA_DIR, if set (on SQLite, it must hold the database);
2. ./.pefthub, if it holds a SQLite database (and DATABASE_URL is unset);
3. the data dir of the one hub running for this user on that database: `up` records
   itself in ``${XDG_STATE_HOME:-~/.local/state}/pefthub/hubs/<pid>.json``;
4. with DATABASE_URL, ./.pefthub: the database is the one named, the folder holds only
   the secret key (and local blobs).

Anything else is refused with what to set: a command run from another folder once made a
new empty database there and printed a token the running hub rejected. A data dir that a
running hub uses with another database is refused too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: commands that make a hub's data, and commands that never read it
CREATES_DATA = frozenset({"up", "migrate"})
NO_DATA = frozenset({"help", "version", "check", "makemigrations", "spectacular", "diffsettings", "collectstatic",
                     "findstatic"})
DEFAULT_DATA_DIR = ".pefthub"


class NoHubData(Exception):
    """The command needs a hub's data and none can be found (or the choice is ambiguous)."""


@dataclass(frozen=True)
class HubRecord:
    """What a running `up` wrote about itself."""

    path: Path
    pid: int
    url: str
    data_dir: Path
    database: str
    started_at: float

    @property
    def alive(self) -> bool:
        return _is_hub_process(self.pid)


def hubs_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "pefthub" / "hubs"


def database_label(data_dir: Path, database_url: str) -> str:
    """The database a process with this data dir and DATABASE_URL uses, without credentials: ``sqlite3 /path``."""
    import dj_database_url

    db = dj_database_url.parse(database_url or f"sqlite:///{data_dir / 'db.sqlite3'}")
    engine = db["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite3 {Path(db['NAME']).resolve()}"
    return f"{engine} {db.get('HOST') or 'localhost'}:{db.get('PORT') or ''}/{db.get('NAME')}"


def hub_record_write(*, url: str, data_dir: Path, database: str) -> Path:
    """Say, for other commands of this user, that this process serves ``url`` on this data.

    The record stays after the hub stops (a stopped hub's data dir is still worth naming);
    the next `up` drops the records of stopped hubs.
    """
    folder = hubs_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for record in hub_records():
        if not record.alive:
            record.path.unlink(missing_ok=True)
    path = folder / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "data_dir": str(data_dir), "database": database,
                               "started_at": time.time()}))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def hub_records() -> list[HubRecord]:
    """Every record in :func:`hubs_dir`, newest first; unreadable ones are skipped."""
    records = []
    for path in hubs_dir().glob("*.json"):
        try:
            raw = json.loads(path.read_text())
            records.append(HubRecord(path, int(raw["pid"]), str(raw["url"]), Path(raw["data_dir"]),
                                     str(raw["database"]), float(raw["started_at"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(records, key=lambda r: r.started_at, reverse=True)


def _is_hub_process(pid: int) -> bool:
    """Whether ``pid`` runs and, where /proc tells, is still a `pefthub-server up` (pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if pid == os.getpid():
        return False  # this command took the pid of a hub that stopped
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"up" in args and any(b"pefthub" in arg for arg in args)
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc here (macOS): trust the pid
    except OSError:
        return True


def _hub_line(record: HubRecord) -> str:
    return f"PEFTHUB_DATA_DIR={record.data_dir}  (the hub on {record.url}, pid {record.pid}, {record.database})"


def find_data_dir(command: str, environ: dict[str, str] | os._Environ = os.environ) -> tuple[Path | None, str]:
    """The data dir ``command`` must use (None: the settings' default) and a note for stderr; or NoHubData."""
    if command in CREATES_DATA or command in NO_DATA:
        return None, ""
    database_url = environ.get("DATABASE_URL", "")
    records = hub_records()
    live = [r for r in records if r.alive]
    # the hubs this command could mean: on SQLite in their data dir, or on the database DATABASE_URL names
    ours = [r for r in live if r.database == database_label(r.data_dir, database_url)]

    def same_database(data_dir: Path) -> Path:
        mine = database_label(data_dir, database_url)
        for record in live:
            if record.data_dir == data_dir and record.database != mine:
                fix = "unset DATABASE_URL" if record.database.startswith("sqlite3 ") and database_url \
                    else "set DATABASE_URL as that hub has it"
                raise NoHubData(f"the hub on {record.url} uses {data_dir} with the database {record.database}, "
                                f"but this command would use {mine}: {fix}")
        return data_dir

    def running(hubs: list[HubRecord]) -> str:
        return "".join(f"\n  {_hub_line(r)}" for r in hubs)

    explicit = environ.get("PEFTHUB_DATA_DIR")
    if explicit:
        data_dir = Path(explicit).expanduser().resolve()
        if not database_url and not (data_dir / "db.sqlite3").exists():
            maker = "migrate" if command == "serve" else "up"  # serve never migrates: it is told to
            raise NoHubData(f"no hub database in PEFTHUB_DATA_DIR={data_dir}; `pefthub-server {maker}` makes one there"
                            + (f", or point PEFTHUB_DATA_DIR at a running hub's:{running(live)}" if live else ""))
        return same_database(data_dir), ""
    here = Path(DEFAULT_DATA_DIR).resolve()
    if not database_url and (here / "db.sqlite3").exists():
        elsewhere = [r for r in ours if r.data_dir != here]
        note = f"note: using the hub data in {here}; a running hub's is elsewhere:{running(elsewhere)}" \
            if elsewhere and not any(r.data_dir == here for r in live) else ""
        return same_database(here), note
    if len(ours) == 1:
        hub = ours[0]
        return hub.data_dir, f"using the data of the hub running on {hub.url} (pid {hub.pid}): {hub.data_dir}"
    if len(ours) > 1:
        raise NoHubData(f"no hub data in {here} and {len(ours)} hubs are running; say which with PEFTHUB_DATA_DIR:"
                        + running(ours))
    if database_url:
        return None, ""  # DATABASE_URL names the database; the data dir holds only the secret key and local blobs
    if live:  # running, each on a database DATABASE_URL names
        lines = "".join(f"\n  the hub on {r.url} uses {r.database}: set DATABASE_URL as it has it" for r in live)
        raise NoHubData(f"no hub data in {here}, and every hub running for this user uses another database:{lines}")
    message = (f"no hub data in {here} and no hub is running for this user: set PEFTHUB_DATA_DIR to the hub's "
               "data dir, or start one with `pefthub-server up`")
    if records:
        last = records[0]
        message += f"\n  the last hub (on {last.url}, pid {last.pid}, stopped) used PEFTHUB_DATA_DIR={last.data_dir}"
    raise NoHubData(message)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pefthub_server.settings")
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args and not args[0].startswith("-") else "help"
    try:
        data_dir, note = find_data_dir(command)
    except NoHubData as exc:
        sys.stderr.write(f"pefthub-server {command}: {exc}\n")
        raise SystemExit(2) from None
    if data_dir is not None:
        os.environ["PEFTHUB_DATA_DIR"] = str(data_dir)
    if note:
        sys.stderr.write(note + "\n")
    if command == "serve":
        os.environ.setdefault("PEFTHUB_LOG_FORMAT", "json")  # production logs are read by machines
    from django.core.management import execute_from_command_line

    execute_from_command_line(["pefthub-server", *args])


if __name__ == "__main__":
    main()
