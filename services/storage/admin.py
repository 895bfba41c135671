"""``python -m storage.admin grant|revoke EMAIL`` and ``python -m storage.admin list``: who is an administrator.

An operator's command, run where storage runs (the same DATABASE_URL; in Kubernetes
``kubectl exec deploy/storage -- python -m storage.admin grant EMAIL``). The role is stored with
the account, so it cannot be claimed by registering an address; gateways see a change within
USER_CACHE_TTL_S. Exit status: 0 done, 1 no account has that email, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import asyncpg
from studyassist.core.bootstrap import StartupError
from studyassist.core.config import ConfigError, env_str

from storage import accounts
from storage.db import connect

ROLE_OF = {"grant": "admin", "revoke": "student"}


async def _run(database_url: str, command: str, email: str) -> int:
    db = await connect(database_url, min_size=0, max_size=1, acquire_timeout_s=10.0)
    try:
        if command == "list":
            for row in await accounts.admins(db):
                print(f"{row['email']}\t{row['id']}" + ("" if row["active"] else "\t(inactive)"))
            return 0
        user_id = await accounts.set_role(db, email, ROLE_OF[command])
    finally:
        await db.close()
    if user_id is None:
        print(f"storage.admin: no account has the email {accounts.normalise_email(email)!r}", file=sys.stderr)
        return 1
    print(f"{accounts.normalise_email(email)} ({user_id}) is now {'an admin' if command == 'grant' else 'a student'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.admin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("grant", "make the account an administrator"), ("revoke", "make it a student again")):
        sub.add_parser(name, help=help_text).add_argument("email")
    sub.add_parser("list", help="list the administrators")
    args = parser.parse_args(argv)

    try:
        database_url = env_str(os.environ, "DATABASE_URL", "")
        if not database_url:
            raise ConfigError("DATABASE_URL is required (the storage service's database)")
    except ConfigError as exc:
        print(f"storage.admin: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(database_url, args.command, getattr(args, "email", "")))
    except (OSError, StartupError, asyncpg.PostgresError) as exc:
        print(f"storage.admin: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
