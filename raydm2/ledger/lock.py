"""One writer per project: a lock file holding the owner's host, pid and start time.

Local projects take the lock with an exclusive create (O_EXCL), which is atomic. A lock whose owner runs on this
host but whose pid is gone is stale and is taken over. On object stores, which have no exclusive create, the lock
is written and read back to confirm ownership (best effort), and a lock older than `ttl_s` counts as stale
because another host's pid cannot be checked.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from raydm2.errors import ProjectLockedError, RayDM2Error
from raydm2.data.storage import Location

DEFAULT_TTL_S = 24 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProjectLock:
    """Re-entrant within one process, so `round` (train, then acquire) holds it across both steps."""

    _held: dict[str, tuple[str, int]] = {}
    _guard = threading.Lock()

    def __init__(self, loc: Location, ttl_s: float = DEFAULT_TTL_S):
        self.loc = loc
        self.ttl_s = ttl_s

    def _owner_record(self, token: str) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), "token": token}

    def read_owner(self) -> dict | None:
        try:
            return json.loads(self.loc.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            # A lock file we cannot parse was cut short mid-write by a crash; nobody can own it.
            return {}

    def is_stale(self, owner: dict) -> bool:
        if not owner:
            return True
        if owner.get("host") == socket.gethostname():
            return not _pid_alive(int(owner.get("pid", -1)))
        return time.time() - float(owner.get("started_at", 0)) > self.ttl_s

    def acquire(self) -> None:
        with self._guard:
            held = self._held.get(self.loc.uri)
            if held is not None:
                self._held[self.loc.uri] = (held[0], held[1] + 1)
                return
            token = uuid.uuid4().hex
            for _ in range(3):
                if self._try_create(token):
                    self._held[self.loc.uri] = (token, 1)
                    return
                owner = self.read_owner()
                if owner is None:
                    continue
                if not self.is_stale(owner):
                    raise ProjectLockedError(
                        f"project is locked by another writer (host {owner.get('host')}, pid {owner.get('pid')},"
                        f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('started_at', 0)))});"
                        f" wait for it to finish, or remove {self.loc.uri} if that process is gone"
                    )
                self._break_stale(owner)
            raise ProjectLockedError(f"could not take the project lock {self.loc.uri} (contended)")

    def _try_create(self, token: str) -> bool:
        record = json.dumps(self._owner_record(token)).encode()
        if self.loc.is_local:
            os.makedirs(os.path.dirname(self.loc.path), exist_ok=True)
            try:
                fd = os.open(self.loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(record)
            except OSError:  # e.g. a full disk: leave no empty lock behind
                os.unlink(self.loc.path)
                raise
            return True
        if self.loc.exists():
            return False
        self.loc.write_bytes(record)
        return (self.read_owner() or {}).get("token") == token

    def _break_stale(self, owner: dict) -> None:
        # Rename first so that of two processes breaking the same stale lock only one removes it.
        if self.loc.is_local:
            grave = f"{self.loc.path}.stale-{uuid.uuid4().hex}"
            try:
                os.replace(self.loc.path, grave)
            except FileNotFoundError:
                return
            os.unlink(grave)
        else:
            self.loc.delete()

    def release(self) -> None:
        with self._guard:
            held = self._held.get(self.loc.uri)
            if held is None:
                raise RayDM2Error("releasing a project lock this process does not hold")
            token, depth = held
            if depth > 1:
                self._held[self.loc.uri] = (token, depth - 1)
                return
            del self._held[self.loc.uri]
            if (self.read_owner() or {}).get("token") == token:
                self.loc.delete()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
