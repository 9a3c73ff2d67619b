"""Where a sweep's study lives: a SQLite file in the sweep folder by default, or a PostgreSQL
database (`--storage postgresql://USER:PASSWORD@HOST:PORT/DB`) that several machines share.

A storage URL's password is a secret: `Storage.shown` is the URL with `***` for it, and
`Storage.scrub(text)` takes it (raw or URL-encoded) out of any text before that text is printed,
written to a file or put in an error message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from resnetlab.errors import UsageError, first_line

STORAGE_ENV = "RESNETLAB_SWEEP_STORAGE"  # --storage's default: keeps the password off `ps`
BACKENDS = ("sqlite", "postgresql")
URL_FORMS = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///FILE"


@dataclass(frozen=True)
class Storage:
    url: str  # the real URL: given to SQLAlchemy, never printed
    shown: str  # the URL with its password as ***
    backend: str
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """`text` with every form of the password replaced by ***."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def where(self) -> str:
        if self.backend == "sqlite":
            return f"the SQLite file {self.database}"
        return (
            f"the PostgreSQL database {self.database!r} on {self.host}:{self.port or 5432} "
            f"as user {self.user!r}"
        )


def default_storage_url(folder: str | Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'study.db'}"


def parse_storage(url: str) -> Storage:
    """The URL checked and described; a one-line UsageError that never repeats the URL (it may
    hold a password in a shape we could not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise UsageError(f"--storage is not a database URL; write {URL_FORMS}") from None
    backend = u.get_backend_name()
    if backend not in BACKENDS:
        raise UsageError(
            f"--storage: {backend} databases are not supported; write {URL_FORMS}"
        ) from None
    if u.drivername == "postgresql":  # SQLAlchemy 2.1's default driver is psycopg 3: use ours
        url = u.set(drivername=f"postgresql+{_postgres_driver()}").render_as_string(False)
    secrets = []
    for pw in [u.password, u.query.get("password")]:
        if isinstance(pw, str) and pw:
            secrets += sorted({pw, quote(pw, safe=""), quote(pw)}, key=len, reverse=True)
    shown = u.render_as_string(hide_password=True)
    for secret in secrets:  # a password in the query string too
        shown = shown.replace(secret, "***")
    return Storage(url, shown, backend, u.host, u.port, u.database, u.username, tuple(secrets))


def _postgres_driver() -> str:
    from importlib.util import find_spec

    for driver in ("psycopg2", "psycopg"):
        if find_spec(driver) is not None:
            return driver
    raise UsageError(
        "--storage postgresql:// needs a PostgreSQL driver here: pip install 'resnetlab[sweep]' "
        "(psycopg2-binary)"
    )


def require_optuna() -> None:
    from importlib.util import find_spec

    if find_spec("optuna") is None or find_spec("sqlalchemy") is None:
        raise UsageError("resnetlab sweep needs Optuna: pip install 'resnetlab[sweep]'")


def _retry_callback():
    """Optuna's retry of a trial whose worker stopped beating (killed, lost): a copy of it is
    queued, so the study never waits on a dead trial."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry=2)


def open_storage(storage: Storage, *, heartbeat: int = 30, on_stale=None):
    """Optuna's RDBStorage on `storage`, with heartbeats every `heartbeat` s (a trial silent for
    twice that is failed and queued again). An unreachable database is one line naming it."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if storage.backend == "sqlite":  # several processes on one file: wait for its lock
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    retry = _retry_callback()

    def stale(study, trial) -> None:
        if on_stale is not None:
            on_stale(study, trial)
        retry(study, trial)

    for attempt in range(3):
        try:
            return RDBStorage(
                storage.url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=stale,
            )
        except DBAPIError as e:
            if _is_connection_error(e) or attempt == 2:
                raise unreachable(storage, e) from None
            time.sleep(0.5 + attempt)  # workers creating the tables at the same instant: again
        except SQLAlchemyError as e:
            raise unreachable(storage, e) from None
    raise AssertionError("not reached")


def _is_connection_error(error) -> bool:
    from sqlalchemy.exc import OperationalError

    text = str(getattr(error, "orig", error)).lower()
    return isinstance(error, OperationalError) and any(
        w in text
        for w in ("connect", "authentication", "does not exist", "unable to open", "timeout")
    )


def unreachable(storage: Storage, error: BaseException) -> UsageError:
    cause = storage.scrub(first_line(getattr(error, "orig", None) or error, 160))
    if storage.backend == "sqlite":
        what = "check that its folder exists and can be written"
    else:
        what = (
            "check that the server runs there and accepts connections from this machine, "
            "and the user, password and database name in --storage"
        )
    return UsageError(f"cannot use {storage.where()}: {cause}; {what}")
