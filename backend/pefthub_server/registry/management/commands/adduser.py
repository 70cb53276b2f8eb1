"""Create a user (and team and membership) if missing; print a new token alone on stdout."""

from __future__ import annotations

from django.contrib.auth import get_user_model
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

    def handle(self, *args, **opts):
        call_command("migrate", verbosity=0, interactive=False, stdout=self.stderr)
        existed = User.objects.filter(username=opts["username"]).exists()
        try:
            user = user_ensure(username=opts["username"], team=opts["team"], role=opts["role"], staff=opts["staff"])
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
        expiry = f"expires in {opts['expires_in_days']} days" if opts["expires_in_days"] is not None else "never expires"
        self.stderr.write(f"{made}; token {opts['token_name']!r} on stdout: scope {opts['scope']}, {expiry}")
        self.stdout.write(secret)
