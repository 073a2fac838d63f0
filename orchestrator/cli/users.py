"""``sdl users``: console users and API tokens, from the lab PC's shell (the first admin comes from here).

    sdl users add NAME --role observer|operator|admin [--password-stdin | --no-password] [--db URL]
    sdl users token NAME [--days N] [--label TEXT] [--db URL]
    sdl users revoke TOKEN_ID [--db URL]
    sdl users list [--db URL]
    sdl users set NAME [--role ROLE] [--disable | --enable] [--password-stdin] [--db URL]

Whoever can run this can write the database, so it needs no login; everything it does is audited
under the shell user's name ("cli:<login>").
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Callable

import structlog
from rich.console import Console
from rich.table import Table

from orchestrator.console import db
from orchestrator.console.users import TOKEN_PREFIX, Role, UserDirectory, UserError

EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    users = subparsers.add_parser(
        "users", help="console users and API tokens", description="Add users, issue tokens, change roles."
    )
    sub = users.add_subparsers(dest="users_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", help="add a user (the first one should be an admin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    how.add_argument("--no-password", action="store_true", help="a token-only user, for scripts")
    add.set_defaults(func=_add)

    token = sub.add_parser("token", help="issue an API token (printed once, stored hashed)")
    token.add_argument("name")
    token.add_argument("--days", type=float, default=30.0, help="lifetime in days (default 30)")
    token.add_argument("--label", default="", help="what the token is for, shown in listings")
    token.set_defaults(func=_token)

    revoke = sub.add_parser("revoke", help="revoke an API token at once (its id, as `sdl users list` shows it)")
    revoke.add_argument("token_id", help="the token's id: the part between 'sdl_' and the dot, or the whole token")
    revoke.set_defaults(func=_revoke)

    lst = sub.add_parser("list", help="list users and their tokens")
    lst.set_defaults(func=_list)

    change = sub.add_parser("set", help="change a user's role, password or whether it may log in")
    change.add_argument("name")
    change.add_argument("--role", choices=[r.value for r in Role])
    state = change.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse its logins, sessions and tokens")
    state.add_argument("--enable", action="store_true")
    change.add_argument(
        "--password-stdin", action="store_true", help="read a new password from standard input"
    )
    change.set_defaults(func=_set)

    for p in (add, token, revoke, lst, change):
        p.add_argument("--db", default=db.default_url(), help="store URL (default: $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db)")


def _directory(url: str) -> UserDirectory:
    engine = db.engine_for(url)
    db.ensure_console_schema(engine)
    return UserDirectory(engine)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:
        return "cli"


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for a password: pipe it in with --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ: run the command again")
    return first


def _run(action: Callable[[], None]) -> int:
    """Run one sub-command with warnings-only logs on stderr (stdout carries a token, if anything)."""
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        action()
    except UserError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    finally:
        structlog.configure(**previous)
    return 0


def _add(args: argparse.Namespace) -> int:
    def action() -> None:
        password = None if args.no_password else _read_password(args.password_stdin)
        user = _directory(args.db).add_user(args.name, Role(args.role), password, who=_who())
        Console(stderr=True).print(f"added {user.name} as {user.role.value}")

    return _run(action)


def _token(args: argparse.Namespace) -> int:
    def action() -> None:
        token, info = _directory(args.db).issue_token(args.name, args.days, who=_who(), label=args.label)
        Console(stderr=True).print(
            f"token {info.id} for {info.user}, valid until {info.expires_at:%Y-%m-%d %H:%M} UTC; "
            "it is shown only now:"
        )
        sys.stdout.write(token + "\n")  # alone on stdout, so `TOKEN=$(sdl users token ...)` works

    return _run(action)


def _revoke(args: argparse.Namespace) -> int:
    def action() -> None:
        token_id = args.token_id.strip()
        if token_id.startswith(TOKEN_PREFIX):  # the whole token pasted: its id is before the dot
            token_id = token_id[len(TOKEN_PREFIX):].partition(".")[0]
        _directory(args.db).revoke_token(token_id, who=_who())
        Console(stderr=True).print(f"token {token_id} revoked: a running console refuses it within 2 s")

    return _run(action)


def _list(args: argparse.Namespace) -> int:
    def action() -> None:
        directory = _directory(args.db)
        table = Table("user", "role", "login", "tokens (id: expires)")
        tokens = directory.list_tokens()
        for u in directory.list_users():
            mine = [
                f"{t.id}: {t.expires_at:%Y-%m-%d}"
                + (" revoked" if t.revoked else " expired" if t.expired else "")
                for t in tokens
                if t.user == u.name
            ]
            login = "disabled" if u.disabled else "password" if u.has_password else "token only"
            table.add_row(u.name, u.role.value, login, "\n".join(mine))
        Console().print(table)

    return _run(action)


def _set(args: argparse.Namespace) -> int:
    def action() -> None:
        disabled = True if args.disable else False if args.enable else None
        password = _read_password(True) if args.password_stdin else None
        user = _directory(args.db).update_user(
            args.name, _who(), role=args.role, disabled=disabled, password=password
        )
        Console(stderr=True).print(f"{user.name}: {user.role.value}{', disabled' if user.disabled else ''}")

    return _run(action)


__all__ = ["register"]
