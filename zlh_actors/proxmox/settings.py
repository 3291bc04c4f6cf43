"""How the driver reaches Proxmox, and how long it keeps trying.

The caller (the composition root) builds `ProxmoxSettings` from its own configuration and passes it
in; the driver reads no environment variables, so tests and production differ only in the values.

The defaults are for production; docs/proxmox.md explains each budget. Three kinds of time are kept
apart on purpose:
- HTTP timeouts (`connect_timeout`, `read_timeout`) bound one request. They must be explicit:
  proxmoxer's default is 5 s for everything, shorter than a busy PVE takes to answer a clone.
- `lock_wait` bounds how long one operation keeps retrying a guest whose config lock is held. A lock
  held longer than that is probably stale and needs an operator (`pct unlock`).
- `task_timeout` bounds how long the driver waits for one task (clone, start, destroy...). Running
  out of it is not a failure of the task; the caller re-reads the state later.
"""

from __future__ import annotations

import dataclasses

from zlh_actors import errors


@dataclasses.dataclass(frozen=True)
class ProxmoxSettings:
    """Connection, authentication and retry policy of the Proxmox driver.

    Attributes:
        host: the PVE API host (any cluster node, or a load balancer in front of them).
        user: the token's user, e.g. "zlh@pve".
        token_name: the token id without the user, e.g. "actors".
        token_value: the token secret (kept out of repr, so it never reaches a log).
        port: the API port.
        verify_tls: verify the server's certificate (on unless explicitly turned off).
        ca_file: a PEM file of the CA (or self-signed certificate) to verify against instead of the
            system store. Implies verify_tls.
        connect_timeout, read_timeout: seconds, per HTTP request.
        pool_size: worker threads, each with its own proxmoxer session and one HTTP connection.
        clone_storage: target storage for full clones; None keeps the template's storage (which must
            then be shared, since clones land on other nodes than the template's).
        lock_wait: seconds one operation keeps retrying a held lock before raising `Locked`.
        task_timeout: seconds to wait for one task before raising `TaskWaitTimeout`.
        read_attempts: tries of an idempotent read (GET) that met a transient error.
        operation_attempts: tries of a whole operation (re-reading the state each time) after a
            transient error of a write.
        backoff_initial, backoff_max: seconds; retry delays double from the first up to the cap,
            with jitter.
        task_poll_initial, task_poll_max: seconds between task status polls, growing from the first
            to the cap (short tasks end quickly, long ones need not be polled hard).
        task_log_lines: how many of a failed task's last log lines go into `TaskFailed`.
    """

    host: str
    user: str
    token_name: str
    token_value: str = dataclasses.field(repr=False)
    port: int = 8006
    verify_tls: bool = True
    ca_file: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_size: int = 8
    clone_storage: str | None = None
    lock_wait: float = 120.0
    task_timeout: float = 900.0
    read_attempts: int = 4
    operation_attempts: int = 5
    backoff_initial: float = 0.25
    backoff_max: float = 10.0
    task_poll_initial: float = 0.1
    task_poll_max: float = 2.0
    task_log_lines: int = 20

    def __post_init__(self) -> None:
        if not (self.host and self.user and self.token_name and self.token_value):
            raise errors.ConfigError("Proxmox host, user, token_name and token_value are required")
        if self.ca_file is not None and not self.verify_tls:
            raise errors.ConfigError("Proxmox ca_file given but verify_tls is off", ca_file=self.ca_file)
        positive = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "lock_wait": self.lock_wait,
            "task_timeout": self.task_timeout,
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
            "task_poll_initial": self.task_poll_initial,
            "task_poll_max": self.task_poll_max,
        }
        for name, value in positive.items():
            if value <= 0:
                raise errors.ConfigError(f"Proxmox {name} must be positive", **{name: value})
        for name, count in {
            "pool_size": self.pool_size,
            "read_attempts": self.read_attempts,
            "operation_attempts": self.operation_attempts,
        }.items():
            if count < 1:
                raise errors.ConfigError(f"Proxmox {name} must be at least 1", **{name: count})

    @property
    def verify(self) -> bool | str:
        """What requests takes as `verify`: the CA file when one is given, else the flag."""
        return self.ca_file if self.ca_file is not None else self.verify_tls
