"""The `tessera` command: serve, migrate, and manage sources."""

from __future__ import annotations

import contextlib
import gc
import secrets
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import pydantic
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from tessera import __version__
from tessera.config import Settings
from tessera.errors import TesseraError
from tessera.ingest.sources import NewSource, Source

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from tessera.auth.tokens import Principal
    from tessera.store.secrets import Keyring
from tessera.logs import configure_logging

app = typer.Typer(help="Tessera: customer data platform with a built-in CRM.", no_args_is_help=True)
source_app = typer.Typer(
    help="Sources: where events come from, each with a write key.", no_args_is_help=True
)
app.add_typer(source_app, name="source")
token_app = typer.Typer(help="API tokens for the management API.", no_args_is_help=True)
app.add_typer(token_app, name="token")
user_app = typer.Typer(help="Users of the web UI and API.", no_args_is_help=True)
app.add_typer(user_app, name="user")
secrets_app = typer.Typer(
    help="The key stored secrets are encrypted with (TESSERA_SECRET_KEY).", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _settings(**overrides: object) -> Settings:
    try:
        settings = Settings()
        return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"TESSERA_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except TesseraError as exc:
        _fail(str(exc))


def _migrated_engine(settings: Settings) -> Engine:
    from tessera.store import create_store_engine, upgrade

    engine = create_store_engine(
        settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    upgrade(engine)
    return engine


def _keyring(settings: Settings) -> Keyring:
    """The keys for stored secrets; refuses (with what to do) when there are none."""
    from tessera.store.secrets import load_keyring

    with _errors():
        return load_keyring(secret_key=settings.secret_key, database_url=settings.database_url)


def _start_store(settings: Settings) -> tuple[Engine, Keyring]:
    """What `serve` and `worker` do first: the keys (refused before anything changes, e.g.
    PostgreSQL without one), the migrated store, and secrets still in plain text encrypted."""
    keyring = _keyring(settings)
    with _errors():
        engine = _migrated_engine(settings)
    _encrypt_plain_text(engine, keyring)
    return engine, keyring


def _encrypt_plain_text(engine: Engine, keyring: Keyring) -> None:
    """Encrypt the secrets a store from before encryption holds in plain text. A secret no
    key opens is reported here, and in its destination's health, without stopping."""
    from tessera.activation.service import reseal_destinations

    with _errors(), engine.begin() as conn:
        report = reseal_destinations(conn, keyring=keyring, plain_only=True)
    if report.plain_text:
        err.print(
            f"encrypted {report.plain_text} destination secret(s) that were stored in plain text"
        )
    for reason in report.unreadable.values():
        err.print(f"[bold yellow]warning:[/] {reason}")


def _in_transaction(settings: Settings, work: Callable[..., T], **kwargs: object) -> T:
    with _errors():
        engine = _migrated_engine(settings)
        try:
            with engine.begin() as conn:
                return work(conn, **kwargs)
        finally:
            engine.dispose()


@app.command()
def version() -> None:
    """Print Tessera's version."""
    out.print(__version__)


@app.command()
def migrate() -> None:
    """Apply the store's migrations (serve does this at start too)."""
    from tessera.store import create_store_engine, upgrade

    settings = _settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    keyring = _keyring(settings)  # refused before anything changes
    with _errors():
        engine = create_store_engine(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        before, after = upgrade(engine)
    _encrypt_plain_text(engine, keyring)
    engine.dispose()
    if before == after:
        out.print(f"the schema is current (revision {after})")
    else:
        out.print(f"migrated the schema from revision {before or 'empty'} to {after}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [TESSERA_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [TESSERA_PORT].")] = None,
) -> None:
    """Run the API and tracking endpoints in one process, on the configured store."""
    import uvicorn

    from tessera.app import create_app
    from tessera.ingest.sources import create_source, list_sources
    from tessera.local_server import Server

    settings = _settings(host=host, port=port)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    engine, keyring = _start_store(settings)
    with _errors(), engine.begin() as conn:
        sources: list[Source] = list_sources(conn)
        if not sources:
            sources = [create_source(conn, name="default")]
        _first_admin(conn, settings)
    enabled = [source for source in sources if source.enabled]
    _banner(settings, enabled[0] if enabled else None)
    application = create_app(settings, engine=engine, keyring=keyring)
    # What exists now lives as long as the process: keep the collector from rescanning it.
    # Full collections over it took ~70 ms, which set the p99 of a tracking call.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
    )
    server = Server(config, application)  # uvicorn.run's, ending live streams as it stops
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise typer.Exit(3)


def _banner(settings: Settings, source: Source | None) -> None:
    url = settings.base_url
    out.print(f"[bold]Tessera {__version__}[/] is running at [bold]{url}[/]")
    out.print(f"  store:     {settings.database_url}")
    if source is None:
        out.print(
            "  no source is enabled: `tessera source enable NAME` or `tessera source create NAME`"
        )
        return
    body = '{"userId": "user-1", "event": "Signed Up", "properties": {"plan": "trial"}}'
    out.print(f"  source:    {source.name}")
    if isinstance(source, NewSource):  # created just now: the one time its key is known
        user = shlex.quote(source.write_key + ":")
        out.print(f"  write key: {source.write_key}", markup=False)
        out.print("Send a test event (the key is stored hashed: note it now):")
    else:
        user = '"$WRITE_KEY:"'
        out.print(
            f"  write key: {source.write_key_prefix}… (shown once, when it was made; "
            f"`tessera source rotate-key {shlex.quote(source.name)}` makes a new one)",
            markup=False,
        )
        out.print("Send a test event, with WRITE_KEY set to the source's key:")
    curl = (
        f"curl -u {user} {url}/v1/track -H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    out.print(f"  {curl}", markup=False)
    sys.stdout.flush()


@source_app.command("create")
def source_create(
    name: Annotated[str, typer.Argument(help="A name people recognise, e.g. 'web'.")],
) -> None:
    """Create a source; its write key is printed as the last line."""
    from tessera.ingest.sources import create_source

    source = _in_transaction(_settings(), create_source, name=name)
    out.print(
        f"created source {source.name!r} (id {source.id}); its write key (shown only now, "
        "it is stored hashed):"
    )
    out.print(source.write_key, markup=False)


@source_app.command("rotate-key")
def source_rotate_key(name: str) -> None:
    """Give a source a new write key, printed as the last line; the old key stops working."""
    from tessera.ingest.sources import rotate_write_key

    source = _in_transaction(_settings(), rotate_write_key, name=name)
    out.print(
        f"source {source.name!r} has a new write key (the old one is refused from now on, "
        "within TESSERA_WRITE_KEY_CACHE_SECONDS by running servers):"
    )
    out.print(source.write_key, markup=False)


@source_app.command("list")
def source_list() -> None:
    """List the sources with the start of their write keys, and their state."""
    from tessera.ingest.sources import list_sources

    sources = _in_transaction(_settings(), list_sources)
    table = Table("id", "name", "write key", "state", "created")
    for source in sources:
        table.add_row(
            str(source.id),
            source.name,
            f"{source.write_key_prefix}…",
            "enabled" if source.enabled else "disabled",
            source.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@source_app.command("disable")
def source_disable(name: str) -> None:
    """Stop accepting events from a source (its write key then gets 403)."""
    from tessera.ingest.sources import set_source_enabled

    source = _in_transaction(_settings(), set_source_enabled, name=name, enabled=False)
    out.print(f"disabled source {source.name!r}")


@source_app.command("enable")
def source_enable(name: str) -> None:
    """Accept events from a disabled source again."""
    from tessera.ingest.sources import set_source_enabled

    source = _in_transaction(_settings(), set_source_enabled, name=name, enabled=True)
    out.print(f"enabled source {source.name!r}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. 'crm-sync'.")],
    role: Annotated[
        str, typer.Option(help="admin, marketer, sales, support or analyst.")
    ] = "admin",
) -> None:
    """Create an API token; it is printed once, as the last line, and stored hashed."""
    from tessera.audit.service import record
    from tessera.auth.tokens import create_token

    def create(conn: Connection) -> tuple[str, Principal]:
        token, principal = create_token(conn, name=name, role=role)
        record(
            conn, actor="cli", action="token.create", target=f"token:{name}", details={"role": role}
        )
        return token, principal

    token, principal = _in_transaction(_settings(), create)
    out.print(f"created token {principal.name!r} (id {principal.token_id}, role {principal.role})")
    out.print("it is shown only now; keep it:")
    out.print(token, markup=False)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The id `token create` printed.")],
) -> None:
    """Revoke an API token at once."""
    from tessera.audit.service import record
    from tessera.auth.tokens import revoke_token

    def revoke(conn: Connection) -> None:
        revoke_token(conn, token_id=token_id)
        record(conn, actor="cli", action="token.revoke", target=f"token_id:{token_id}")

    _in_transaction(_settings(), revoke)
    out.print(f"revoked token {token_id}")


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Argument(help="The user's email; they sign in with it.")],
    role: Annotated[
        str, typer.Option(help="admin, marketer, sales, support or analyst.")
    ] = "marketer",
    password: Annotated[
        str | None,
        typer.Option(
            help="At least 12 characters; default: generated and printed once.",
            envvar="TESSERA_NEW_USER_PASSWORD",
        ),
    ] = None,
) -> None:
    """Create a user of the web UI and API."""
    from tessera.audit.service import record
    from tessera.auth.users import User, create_user

    chosen = password or secrets.token_urlsafe(15)

    def create(conn: Connection) -> User:
        user = create_user(conn, email=email, password=chosen, role=role)
        record(conn, actor="cli", action="user.create", target=user.email, details={"role": role})
        return user

    user = _in_transaction(_settings(), create)
    out.print(f"created user {user.email} (id {user.id}, role {user.role})")
    if password is None:
        out.print("their password, shown only now:")
        out.print(chosen, markup=False)


@user_app.command("reset-password")
def user_reset_password(email: Annotated[str, typer.Argument(help="The user's email.")]) -> None:
    """Print a one-time password reset token (POST it to /api/v1/auth/reset-password)."""
    from datetime import timedelta

    from tessera.audit.service import record
    from tessera.auth.users import create_password_reset

    settings = _settings()

    def reset(conn: Connection) -> str:
        token = create_password_reset(
            conn, email=email, ttl=timedelta(minutes=settings.password_reset_minutes)
        )
        record(conn, actor="cli", action="auth.reset_requested", target=email.strip().lower())
        return token

    token = _in_transaction(settings, reset)
    minutes = settings.password_reset_minutes
    out.print(f"a one-time reset token for {email.strip().lower()}, valid {minutes:g} minutes:")
    out.print(token, markup=False)


def _first_admin(conn: Connection, settings: Settings) -> None:
    """On a store with no users, create the admin (printing a generated password once)."""
    from tessera.audit.service import record
    from tessera.auth.users import count_users, create_user

    if count_users(conn):
        return
    given = settings.admin_password.get_secret_value() if settings.admin_password else None
    password = given or secrets.token_urlsafe(15)
    user = create_user(conn, email=settings.admin_email, password=password, role="admin")
    record(
        conn,
        actor="cli",
        action="user.create",
        target=user.email,
        details={"role": "admin", "first_start": True},
    )
    out.print(f"created the first admin: {user.email}")
    if given is None:
        out.print(f"  password (shown only now): {password}", markup=False)


@app.command()
def rebuild() -> None:
    """Re-derive every profile, identity cluster and trait from the event log."""
    from dataclasses import replace

    from rich.progress import Progress

    from tessera.processor import (
        Pipeline,
        ensure_layout,
        lag,
        reset_derived_state,
        run_maintenance,
        run_once,
    )
    from tessera.processor.models import DERIVED

    settings = _settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    with _errors():
        engine = _migrated_engine(settings)
        # Destinations have had these messages: the replay queues none of them again.
        pipeline = Pipeline.from_settings(settings, activate=False)
        # One process replays both stages together, whatever the workers do day to day.
        pipeline.config = replace(pipeline.config, derived="inline", partitions=1)
        with engine.begin() as conn:
            reset_derived_state(conn, stages=pipeline.stages)
        ensure_layout(engine, pipeline)  # partitioned workers lay theirs out again
        with engine.connect() as conn:
            total = lag(conn).events
        with Progress(console=err) as progress:
            task = progress.add_task("rebuilding", total=total)
            while applied := run_once(engine, pipeline):
                progress.advance(task, applied)
            audiences = progress.add_task("computed traits and audiences", total=None)
            while steps := run_maintenance(engine, pipeline):
                progress.advance(audiences, steps)
        with engine.connect() as conn:
            left, derived = lag(conn), lag(conn, name=DERIVED)
        engine.dispose()
    out.print(
        f"rebuilt derived state from {total} events (position {left.position}, "
        f"computed traits and audiences at {derived.position})"
    )


@app.command()
def worker(
    wake_stdin: Annotated[
        bool,
        typer.Option(
            help="Wake on every byte read from stdin and stop at its end (how `tessera "
            "serve` runs its processor in a child process).",
            hidden=True,
        ),
    ] = False,
    delivery: Annotated[
        bool, typer.Option(help="Also deliver the outbox to destinations (and run exports).")
    ] = True,
    stage: Annotated[
        str,
        typer.Option(
            help="Which processor stages to run: `all`; `main` (identity, profiles); "
            "`derived` (computed traits, audiences; with TESSERA_PROCESSOR_DERIVED=separate).",
        ),
    ] = "all",
    partition: Annotated[
        list[int] | None,
        typer.Option(
            help="With TESSERA_PROCESSOR_PARTITIONS, a partition of the derived stage this "
            "worker keeps to (repeat it for several); it takes over another's only once no "
            "worker has applied it for a few seconds. Without it, a worker takes any free "
            "partition.",
        ),
    ] = None,
) -> None:
    """Run a processor and a delivery worker without the HTTP server (with
    TESSERA_PROCESSOR_MODE=off, or as fail-over on PostgreSQL).

    Processors take turns on each stage of the log: one applies a batch while the others
    wait, so a worker killed mid-batch loses nothing and another carries on from its
    position. With TESSERA_PROCESSOR_DERIVED=separate, a `--stage main` worker and a
    `--stage derived` worker run the two stages side by side, each on its own core; with
    TESSERA_PROCESSOR_PARTITIONS=N as well, several `--stage derived` workers share the
    derived stage's N partitions (by profile), each partition applied by one at a time.
    """
    import signal
    import threading

    from tessera.activation.delivery import Deliverer
    from tessera.processor import MAIN, STAGES, Pipeline, Processor, tune_gc_for_processing
    from tessera.processor.extensions import worker_jobs
    from tessera.worker_process import follow_wake_pipe

    stages = {"all": STAGES, **{name: (name,) for name in STAGES}}
    if stage not in stages:
        err.print(f"error: --stage must be one of {', '.join(stages)}, not {stage!r}")
        raise typer.Exit(2)
    settings = _settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    own = tuple(partition or ())
    if any(not 0 <= k < settings.processor_partitions for k in own):
        err.print(
            f"error: --partition must be below TESSERA_PROCESSOR_PARTITIONS "
            f"({settings.processor_partitions}), not {', '.join(map(str, own))}"
        )
        raise typer.Exit(2)
    engine, keyring = _start_store(settings)
    with _errors():
        deliverer = Deliverer(engine, settings, keyring=keyring) if delivery else None
        processor = Processor(
            engine,
            Pipeline.from_settings(settings),
            poll_seconds=settings.processor_poll_seconds,
            on_applied=deliverer.wake if deliverer is not None else None,
            stages=stages[stage],
            partitions=own,
            # Worker jobs run beside the main stage (one such worker per deployment at
            # least); a `--stage derived` worker keeps to its stage.
            jobs=worker_jobs(settings) if MAIN in stages[stage] else (),
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def wake() -> None:
        processor.wake()
        if deliverer is not None:
            deliverer.wake()

    if wake_stdin:
        follow_wake_pipe(wake, stop)
    tune_gc_for_processing()
    processor.start()
    if deliverer is not None:
        deliverer.start()
    out.print(f"worker processing {settings.database_url}")
    stop.wait()
    processor.stop()
    if deliverer is not None:
        deliverer.stop()
    engine.dispose()


@app.command()
def demo(
    people: Annotated[int, typer.Option(min=1, max=1_000_000, help="People to simulate.")] = 300,
    seed: Annotated[int, typer.Option(help="The same seed gives the same data.")] = 42,
    url: Annotated[
        str | None, typer.Option(help="A running Tessera to send to; default: one in-process.")
    ] = None,
    write_key: Annotated[str | None, typer.Option(help="Write key for --url.")] = None,
) -> None:
    """Load a realistic retail demo (a fashion shop's customers) through the tracking API,
    with the example computed traits and audiences a marketer would define first."""
    from rich.progress import Progress
    from rich.table import Table as RichTable

    from tessera.app import create_app
    from tessera.demo import demo_summary, generate, send
    from tessera.demo.definitions import define_examples, wait_until_ready
    from tessera.ingest.sources import create_source, get_source, rotate_write_key
    from tessera.local_server import serve_in_thread
    from tessera.processor import wait_until_caught_up

    settings = _settings()
    configure_logging(level="warning", fmt=settings.log_format)
    if url and not write_key:
        _fail("--url needs --write-key, the key of a source on that server")
    with _errors():
        engine = _migrated_engine(settings)
        with engine.begin() as conn:
            try:
                # Its key was shown once, long ago: the demo's own source gets a new one
                # (a --url server has its own sources, so this one is only made, not changed).
                source = (
                    get_source(conn, name="demo") if url else rotate_write_key(conn, name="demo")
                )
            except TesseraError:
                source = create_source(conn, name="demo")
    dataset = generate(seed=seed, people=people, region=settings.identity_phone_region)
    out.print(f"generated {len(dataset.messages)} events for {people} people (seed {seed})")

    def load(base_url: str, key: str) -> None:
        with Progress(console=err) as progress:
            task = progress.add_task("sending", total=len(dataset.messages))
            send(
                dataset,
                base_url=base_url,
                write_key=key,
                progress=lambda n: progress.advance(task, n),
            )

    with _errors():
        if url:
            assert write_key is not None
            load(url, write_key)
        else:
            assert isinstance(source, NewSource)
            # Defined first, so the processor keeps them current event by event.
            with engine.begin() as conn:
                made = define_examples(conn)
            if any(made):
                out.print(f"defined {made[0]} computed traits and {made[1]} audiences")
            with serve_in_thread(create_app(settings, engine=engine)) as base_url:
                load(base_url, source.write_key)
                wait_until_caught_up(engine, timeout=600)
                wait_until_ready(engine)
    table = RichTable("what", "count")
    for key, value in demo_summary(dataset).items():
        table.add_row(key, str(value))
    out.print(table)
    example = next(person for person in dataset.people if person.identified and person.emails)
    out.print(
        f"try: GET /api/v1/profiles/email:{example.emails[-1]} with a token from "
        "`tessera token create me`"
    )


@secrets_app.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new random key for TESSERA_SECRET_KEY (it changes nothing stored)."""
    from tessera.store.secrets import generate_key

    out.print(generate_key(), markup=False)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret under the newest (first) key in TESSERA_SECRET_KEY.

    Rotation: prepend a new key (`NEW,OLD`) in every process's settings and restart them,
    run this, then drop OLD. Secrets still in plain text are encrypted too. If any secret
    opens with none of the keys, nothing is changed and the destinations are named.
    """
    from tessera.activation.service import reseal_destinations
    from tessera.audit.service import record
    from tessera.store.secrets import SecretUnreadable

    settings = _settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    keyring = _keyring(settings)

    def rotate(conn: Connection) -> tuple[int, int, int]:
        report = reseal_destinations(conn, keyring=keyring, plain_only=False)
        if report.unreadable:
            reasons = "; ".join(report.unreadable.values())
            raise SecretUnreadable(f"nothing was re-encrypted: {reasons}")
        counts = (report.values, report.destinations, report.plain_text)
        record(
            conn,
            actor="cli",
            action="secrets.rotate",
            target="destinations",
            details={"secrets": counts[0], "destinations": counts[1], "plain_text": counts[2]},
        )
        return counts

    values, destinations, plain = _in_transaction(settings, rotate)
    out.print(
        f"re-encrypted {values} secret(s) of {destinations} destination(s) under the newest key"
        + (f" ({plain} had been stored in plain text)" if plain else "")
    )
    if len(keyring.keys) > 1:
        out.print("the older keys in TESSERA_SECRET_KEY can now be dropped (restart after)")


def main() -> None:
    app()
