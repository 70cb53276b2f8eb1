"""Create a user (and team and membership) if missing, optionally with a password; print a new token alone on stdout."""

from __future__ import annotations

import getpass
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from pefthub.protocol.errors import ProtocolError
from pefthub_server.core.errors import HubError
from pefthub_server.core.models import USER_SCOPES, Scope
from pefthub_server.core.tokens import operator_token_create
from pefthub_server.registry.models import Role
from pefthub_server.registry.teams import user_ensure

User = get_user_model()


class Command(BaseCommand):
    help = "Create USER (and TEAM, membership) if missing and print a fresh API token on stdout."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--team", help="team to create if missing and add the user to")
        parser.add_argument("--role", choices=Role.values, default=Role.WRITE, help="role in --team (default: write)")
        parser.add_argument("--scope", choices=USER_SCOPES, default=Scope.WRITE,
                            help="token scope (default: write); a `worker` token makes the user staff (an operator)")
        parser.add_argument("--staff", action="store_true", help="make the user staff and superuser (Django admin)")
        parser.add_argument("--token-name", default="adduser", help="name shown in the token list")
        parser.add_argument("--expires-in-days", type=int, default=None)
        password = parser.add_mutually_exclusive_group()
        password.add_argument("--password", action="store_true",
                              help="set a password for web sign-in (asked twice; needs a terminal)")
        password.add_argument("--password-stdin", action="store_true",
                              help="set a password for web sign-in, read as the first line of stdin (for scripts)")

    def handle(self, *args, **opts):
        password = self._password(opts)  # asked and checked before anything is made
        call_command("migrate", verbosity=0, interactive=False, stdout=self.stderr)
        existed = User.objects.filter(username=opts["username"]).exists()
        try:
            user = user_ensure(username=opts["username"], team=opts["team"], role=opts["role"], staff=opts["staff"])
            if password is not None:
                user.set_password(password)
                user.save(update_fields=["password"])
            _, secret = operator_token_create(
                user=user, name=opts["token_name"], scope=opts["scope"], expires_in_days=opts["expires_in_days"]
            )
        except (HubError, ProtocolError) as exc:
            raise CommandError(exc.message) from exc
        # Say what was made: the token's scope is not the user's role (a write-scope token of a
        # `read` member still only reads that team's repositories).
        made = f"{'existing' if existed else 'new'} user {user.username}{' (staff)' if user.is_staff else ''}"
        if opts["team"]:
            made += f", role {opts['role']} in team {opts['team']}"
        if password is not None:
            made += ", password set (web sign-in at /account/sign-in)"
        expiry = f"expires in {opts['expires_in_days']} days" if opts["expires_in_days"] is not None else "never expires"
        self.stderr.write(f"{made}; token {opts['token_name']!r} on stdout: scope {opts['scope']}, {expiry}")
        self.stdout.write(secret)

    def _password(self, opts) -> str | None:
        """The password asked for (twice at a terminal, or stdin's first line), checked by the server's validators."""
        if opts["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
        elif opts["password"]:
            if not sys.stdin.isatty():
                raise CommandError("--password asks at a terminal and stdin is not one; "
                                   "pipe the password to --password-stdin instead.")
            password = getpass.getpass(f"Password for {opts['username']}: ")
            if getpass.getpass("Password (again): ") != password:
                raise CommandError("The two passwords differ; nothing was changed. Run the command again.")
        else:
            return None
        if not password:
            raise CommandError("The password is empty; nothing was changed.")
        try:
            validate_password(password, user=User(username=opts["username"]))
        except ValidationError as exc:
            raise CommandError(f"Password refused: {' '.join(exc.messages)} Nothing was changed.") from exc
        return password
