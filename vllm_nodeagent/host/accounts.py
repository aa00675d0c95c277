"""The one account model: users and groups from ``--root``'s /etc/passwd and /etc/group.

Read through the safe open (root-owned files in root-owned directories, size-capped), so under ``--root`` the
accounts are the root's, not the machine's, and nothing an unprivileged user wrote decides who vLLM runs as.
Under ``--root`` the accounts come from the tree only: a tree with no /etc/passwd has no users (``unknown()``
names the missing file), one with no /etc/group no supplementary groups; the machine's files are never read
for it (a user the host has would be "found" with the host's uid, which the tree may not have at all).
``name_of_uid`` is the exception, for messages about real files' owners: a uid on disk is the machine's.
Only the local files count, not
NSS (LDAP, sssd): the agent's own user is a local system account (the package creates it with
``useradd --system``), and a directory service is not something root should trust for it.
"""

from __future__ import annotations

import errno
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.host.errors import HostError
from vllm_nodeagent.host.parse import parse_group, parse_passwd

if TYPE_CHECKING:
    from vllm_nodeagent.host.files import Host

PASSWD = "/etc/passwd"  # noqa: S105 (a path, not a password)
GROUP = "/etc/group"
MAX_ACCOUNT_FILE = 16 << 20  # big sites keep tens of thousands of local accounts: still far below this


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    groups: frozenset[int] = frozenset()  # primary and supplementary gids: filled by Accounts.member()


class Accounts:
    """Users and groups of one host tree; the files are read once, on first use."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._users: Optional[list[Account]] = None
        self._groups: Optional[list[tuple[str, int, list[str]]]] = None
        self.absent: set[str] = set()  # PASSWD / GROUP when a --root tree has no such file

    @classmethod
    def of(cls, host: Host) -> Accounts:
        return cls(str(host.root))

    @property
    def under_tree(self) -> bool:
        return self.root.rstrip("/") != ""

    def shown(self, path: str) -> str:
        """``path`` as the operator finds it: inside the tree under --root."""
        return f"{self.root.rstrip('/')}{path}" if self.under_tree else path

    def _read(self, path: str) -> str:
        from vllm_nodeagent.host.fsafe import read_file

        try:
            raw = read_file(self.root, path, "account file", cap=MAX_ACCOUNT_FILE)
        except HostError as exc:
            # A --root tree without the file has no such accounts: never the machine's (issue 26.8). The real
            # host without /etc/passwd is broken, not empty: that stays an error.
            if exc.errno != errno.ENOENT or not self.under_tree:
                raise
            self.absent.add(path)
            return ""
        return raw.decode("utf-8", "replace")

    def users(self) -> list[Account]:
        """Every user; raises HostError (a one-line refusal for an unsafe file) when /etc/passwd is unusable.
        A --root tree without /etc/passwd has none (``unknown`` says so)."""
        if self._users is None:
            self._users = [Account(n, u, g, h) for n, u, g, h in parse_passwd(self._read(PASSWD))]
        return self._users

    def unknown(self, name: str) -> str:
        """Why ``name`` is not a user here, naming the file (the tree's under --root), for a fault line."""
        if PASSWD in self.absent:
            return f"{self.shown(PASSWD)} does not exist (under --root the accounts are the tree's only)"
        return f"not in {self.shown(PASSWD)}"

    def add_hint(self, name: str) -> str:
        """The command that creates ``name`` where these accounts live (the tree, under --root)."""
        where = f"--root {self.root.rstrip('/')} " if self.under_tree else ""
        return f"useradd {where}--system {name}"

    def groups(self) -> list[tuple[str, int, list[str]]]:
        if self._groups is None:
            try:
                self._groups = parse_group(self._read(GROUP))
            except HostError:
                self._groups = []  # supplementary groups only: a missing /etc/group leaves the primary one
        return self._groups

    def user(self, name: str) -> Optional[Account]:
        return next((a for a in self.users() if a.name == name), None)

    def by_uid(self, uid: int) -> Optional[Account]:
        return next((a for a in self.users() if a.uid == uid), None)

    def member(self, name: str) -> Optional[Account]:
        """The user with its groups (primary and supplementary) filled in; None when unknown."""
        a = self.user(name)
        return None if a is None else Account(a.name, a.uid, a.gid, a.home, frozenset(self.group_ids(a)))

    def group_ids(self, account: Account) -> list[int]:
        """The primary group and every group listing the user as a member (what initgroups(3) gives)."""
        return sorted({account.gid, *(gid for _, gid, members in self.groups() if account.name in members)})


@functools.lru_cache(maxsize=64)
def name_of_uid(uid: int) -> str:
    """The real host's name for ``uid`` ("" when unknown): for messages only, never for a decision."""
    try:
        account = Accounts("/").by_uid(uid)
    except (HostError, ValueError):
        return ""
    return account.name if account else ""
