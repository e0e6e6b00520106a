"""The service's commands: ``serve`` (the stdio proxy MCP hosts launch), ``daemon`` and ``token``.

``serve`` imports neither torch nor the MCP SDK unless ``--standalone``: it relays MCP between stdio and
the store's daemon (started when none runs). The daemon is the one process that holds the store and
the models; ``token`` manages the bearer tokens of its HTTP clients (and of socket clients that want a
narrower scope).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

SQL_TIMEOUT = 10.0  # seconds the sql and recall tools let one query run (0: no limit)
UNLOAD_AFTER = 600.0  # seconds a model may stay loaded without being used
IDLE_EXIT = 900.0  # seconds an auto-started daemon waits without clients before it exits
INSTALL_HINT = 'the MCP server needs the `mcp` package: pip install "aios-memory[mcp]"'


def _store_path(ctx: click.Context, store_path: Path | None, *, must_exist: bool = True) -> Path:
    """The local store a service command runs on; one that does not exist is refused (``daemon``, which
    writes, may create it). Its recorded models directory applies unless the environment chose one."""
    from aios_memory.errors import NOT_FOUND_HINT
    from aios_memory.home import default_store_path
    from aios_memory.settings import use_store_models

    VERSIONS = "_versions"  # storage.manifest.VERSIONS; importing that package loads pyarrow into every proxy

    root = ctx.find_root().obj or {}
    store = store_path or root.get("store") or default_store_path()
    if isinstance(store, str) and "://" in store:  # the daemon, its tokens and sockets live beside a store
        raise click.UsageError(
            f"{store}: the service commands (daemon, serve, token) run on a local store directory; "
            "object storage is reached through the Python API and the store commands"
        )
    if must_exist and not (Path(store) / VERSIONS).is_dir():
        raise click.ClickException(
            f"StoreNotFoundError: no store at {Path(store).absolute()}{NOT_FOUND_HINT}"
        )
    if not (Path(store) / VERSIONS).is_dir() and Path(store).is_dir() and any(Path(store).iterdir()):
        raise click.ClickException(  # the daemon may create a store, but never in a folder of files
            f"{Path(store).absolute()} holds files but no store; a store needs a new or empty directory"
        )
    use_store_models(store)
    return Path(store)


def _seconds(flag: str, default: float, help: str, show_default: bool = True) -> Any:  # noqa: A002
    """An option that takes a number of seconds (0 or more)."""
    return click.option(
        flag,
        type=click.FloatRange(0.0),
        default=default,
        show_default=show_default,
        metavar="SECONDS",
        help=help,
    )


_store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory (default: the one given to aios-memory --store, else $AIOS_MEMORY_HOME/store).",
)
_dedupe_option = click.option(
    "--dedupe",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Cosine threshold at or above which `remember` returns the existing memory instead of a duplicate.",
)
_timeout_option = click.option(
    "--sql-timeout",
    type=click.FloatRange(0.0),
    default=SQL_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Time limit of one `sql` or `recall` query; 0 for no limit.",
)
_allow_read_option = click.option(
    "--allow-read",
    "allow_read",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory whose files clients may ask the server to read (remember/recall by path); "
    "none by default. Repeat for several.",
)
_media_sql_option = click.option(
    "--allow-media-sql",
    is_flag=True,
    help="Let `sql` see the media column (the stored image/audio bytes); off by default.",
)


@click.command()
@_store_option
@click.option(
    "--standalone",
    is_flag=True,
    help="Serve MCP from this process (its own models) instead of relaying to the store's daemon.",
)
@click.option(
    "--http", is_flag=True, help="Run the daemon in the foreground with HTTP (see `daemon --http`)."
)
@click.option("--port", default=None, type=int, help="Port for --http.")
@click.option(
    "--token",
    envvar="AIOS_MEMORY_TOKEN",
    default=None,
    help="A token (aiosm_...) to narrow this client's scope to the token's [env: AIOS_MEMORY_TOKEN].",
)
@_dedupe_option
@_timeout_option
@_allow_read_option
@_media_sql_option
@_seconds(
    "--idle-exit", IDLE_EXIT, "A daemon this command starts exits after this long without clients (0: never)."
)
@_seconds(
    "--unload-after",
    UNLOAD_AFTER,
    "A daemon this command starts unloads a model not used for this long (0: never).",
)
@click.option(
    "--models",
    "models",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Models directory (default: $AIOS_MEMORY_MODELS, $AIOS_MEMORY_HOME/models, else the one the "
    "store recorded when it was created): for MCP hosts that drop environment variables.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    store_path: Path | None,
    models: Path | None,
    standalone: bool,
    http: bool,
    port: int | None,
    token: str | None,
    dedupe: float | None,
    sql_timeout: float,
    allow_read: tuple[Path, ...],
    allow_media_sql: bool,
    idle_exit: float,
    unload_after: float,
) -> None:
    """Serve the store to an agent over MCP on stdio: a thin proxy to the store's daemon, which is
    started (with these options) when none runs and exits when no client has used it for a while."""
    store = _store_path(ctx, store_path)
    if models is not None:  # this process and the daemon it starts
        from aios_memory.settings import use_models

        use_models(models)
    if http:
        ctx.invoke(
            daemon,
            store_path=store,
            http=True,
            port=port,
            dedupe=dedupe,
            sql_timeout=sql_timeout,
            allow_read=allow_read,
            allow_media_sql=allow_media_sql,
        )
        return
    if standalone:
        _standalone(store, dedupe, sql_timeout, allow_read, allow_media_sql, token)
        return
    from aios_memory.service.proxy import run_proxy

    options = [
        f"--sql-timeout={sql_timeout!r}",
        f"--idle-exit={idle_exit!r}",
        f"--unload-after={unload_after!r}",
        *(f"--allow-read={os.path.realpath(d)}" for d in allow_read),
    ]
    if dedupe is not None:
        options.append(f"--dedupe={dedupe!r}")
    if allow_media_sql:
        options.append("--allow-media-sql")
    wanted = {"allow_read": [os.path.realpath(d) for d in allow_read], "allow_media_sql": allow_media_sql}
    raise SystemExit(run_proxy(store, token=token, daemon_options=options, wanted=wanted))


def _standalone(
    store_path: Path,
    dedupe: float | None,
    sql_timeout: float,
    allow_read: tuple[Path, ...],
    allow_media_sql: bool,
    token: str | None,
) -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise click.ClickException(INSTALL_HINT) from None
    from aios_memory.mcp_server import build_server
    from aios_memory.scope import FULL
    from aios_memory.service.tokens import TokenStore
    from aios_memory.store import MemoryStore

    store = MemoryStore(store_path)
    scope = FULL.with_media(allow_media_sql)
    if token is not None:
        info = TokenStore(store.path).verify(token)
        if info is None:
            raise click.ClickException("the token is not a live token of this store")
        scope = scope.narrow(info.scope)
    server = build_server(
        store.scoped(scope), dedupe=dedupe, sql_timeout=sql_timeout or None, allow_read=list(allow_read)
    )
    server.run("stdio")


@click.command()
@_store_option
@click.option(
    "--http", is_flag=True, help="Also serve MCP over streamable HTTP on 127.0.0.1 (bearer tokens)."
)
@click.option("--port", default=None, type=int, help="Port for --http (default 8765).")
@_dedupe_option
@_timeout_option
@_allow_read_option
@_media_sql_option
@_seconds("--unload-after", UNLOAD_AFTER, "Unload a model not used for this long (0: never).")
@_seconds(
    "--idle-exit",
    0.0,
    f"Exit after this long without clients (0: never; serve starts daemons with {IDLE_EXIT:g}).",
    show_default=False,
)
@click.option(
    "--ui-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the web page on 127.0.0.1:PORT (0: any free port) over the daemon's models; "
    "sign in with a token from `aios-memory token create` at /?token=...",
)
@_seconds("--cleanup-every", 600.0, "Remove versions older than the store's retention this often (0: never).")
@click.option(
    "--retention",
    type=click.FloatRange(0.0),
    default=None,
    metavar="SECONDS",
    help="How long a superseded version stays readable before cleanup may remove it "
    "[default: the store's setting (aios-memory retention), else 3600].",
)
@click.option("--stop", is_flag=True, help="Stop the store's running daemon (SIGTERM) and exit.")
@click.pass_context
def daemon(
    ctx: click.Context,
    store_path: Path | None,
    http: bool = False,
    port: int | None = None,
    dedupe: float | None = None,
    sql_timeout: float = SQL_TIMEOUT,
    allow_read: tuple[Path, ...] = (),
    allow_media_sql: bool = False,
    unload_after: float = UNLOAD_AFTER,
    idle_exit: float = 0.0,
    ui_port: int | None = None,
    cleanup_every: float = 600.0,
    retention: float | None = None,
    stop: bool = False,
) -> None:
    """Hold the store and its models once and serve many MCP clients: over a Unix socket (mode 0600,
    what `serve` proxies connect to) and, with --http, streamable HTTP with bearer tokens."""
    store = _store_path(ctx, store_path, must_exist=False)
    if stop:
        from aios_memory.service.proxy import stop_daemon

        click.echo(json.dumps(stop_daemon(store)))
        return
    from aios_memory.service.daemon import Daemon, DaemonConfig

    config = DaemonConfig(
        store=store,
        http_port=(port or 8765) if http else None,
        dedupe=dedupe,
        sql_timeout=sql_timeout or None,
        allow_read=tuple(Path(os.path.realpath(d)) for d in allow_read),
        allow_media_sql=allow_media_sql,
        unload_after=unload_after or None,
        idle_exit=idle_exit or None,
        ui_port=ui_port,
        cleanup_every=cleanup_every or None,
        retention=retention,
    )
    raise SystemExit(Daemon(config).run())


@click.group()
def token() -> None:
    """Bearer tokens of the store's service: what each client may read, write and run."""


@token.command("create")
@click.option("--name", required=True, help="Who or what the token is for (shown in listings and errors).")
@click.option("--namespace", "-n", "namespaces", multiple=True, help="A namespace it may use; repeat.")
@click.option("--all-namespaces", is_flag=True, help="Every namespace (instead of --namespace).")
@click.option("--read-only", is_flag=True, help="No remember, forget or update.")
@click.option("--no-sql", is_flag=True, help="No `sql` tool (recall and resources only).")
@click.pass_context
def token_create(
    ctx: click.Context,
    name: str,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    read_only: bool,
    no_sql: bool,
) -> None:
    """Create a token; prints it once (only its hash is kept)."""
    from aios_memory.service.tokens import TokenStore

    if bool(namespaces) == all_namespaces:
        raise click.UsageError("give --namespace (one or more) or --all-namespaces")
    tokens = TokenStore(_store_path(ctx, None))
    secret, info = tokens.create(
        name, None if all_namespaces else list(namespaces), read_only=read_only, sql=not no_sql
    )
    click.echo(json.dumps({"token": secret, **info.describe()}, indent=2))


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """The live tokens: id, name, scope and creation time (never the tokens themselves)."""
    from aios_memory.service.tokens import TokenStore

    out: list[dict[str, Any]] = [t.describe() for t in TokenStore(_store_path(ctx, None)).list()]
    click.echo(json.dumps(out, indent=2))


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke the token with this id (or the token itself): refused from the next request on."""
    from aios_memory.service.tokens import TokenStore

    info = TokenStore(_store_path(ctx, None)).revoke(token_id)
    click.echo(json.dumps({"revoked": info.describe()}, indent=2))
