"""Typed Proxmox errors, and the one translator that produces them.

PVE reports almost every failure as HTTP 500 with a sentence of text, and proxmoxer hands that
sentence over as the HTTP reason phrase (`ResourceException.content`). The status code alone says
little ("CT is locked (backup)", "Configuration file ... does not exist" and "cluster not ready - no
quorum?" are all 500), so the translator reads PVE's own wording first and falls back on the status
code only when the text is not one it knows. The same wording comes back as the exit status of a
failed task ("TASK ERROR: CT is locked (backup)"), so requests and tasks share one classifier:
`translate` for exceptions raised by proxmoxer or requests, `from_task` for a task that did not end
in `OK`.

Every class is both a `ProxmoxError` (catch everything the driver raises) and one of the project's
behavioural roots (`Transient`: retry with backoff; `Permanent`: do not), so a caller chooses by
what it should do, never by parsing a message. Structured context lives in `details`:
`status` (HTTP status, None for a task), `pve_message` (PVE's text), `method` and `path` of the
request, plus the attributes each class documents.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import proxmoxer
import requests

from zlh_actors import errors


class ProxmoxError(errors.ZlhError):
    """Root of every error the Proxmox driver raises.

    Attributes (in `details`): status, pve_message, method, path, where they apply.
    """


# --- transient: the same call may succeed later ----------------------------------------------------


class ProxmoxUnavailable(ProxmoxError, errors.Transient):
    """PVE could not be reached or answered 5xx/596-599: connection refused or reset, client-side
    timeout, TLS handshake cut, a proxy's error page.

    A write that ends this way may or may not have been applied (the response is what got lost):
    re-read the state before acting again. Attributes (in `details`): cause.
    """


class NodeUnreachable(ProxmoxUnavailable):
    """PVE's 595 "No route to host": the API node cannot reach the node named in the path
    (node offline or cut off from the cluster). Attributes (in `details`): node, when known."""


class NoQuorum(ProxmoxUnavailable):
    """PVE's "cluster not ready - no quorum?": /etc/pve is read-only until quorum returns."""


class Locked(ProxmoxError, errors.Transient):
    """The guest carries a config lock ("CT is locked (<kind>)"): a task (backup, clone, migrate,
    snapshot...) is using it, or a crashed task left the lock behind (see docs/proxmox.md: stale
    locks need `pct unlock <vmid>` by an operator; PVE has no API for it).

    Attributes (in `details`): lock, the lock kind (create, disk, backup, migrate, destroyed...).
    """


class LockTimeout(ProxmoxError, errors.Transient):
    """PVE could not take the config file's flock within its own wait (about 10 s):
    "can't lock file '/run/lock/lxc/pve-config-<vmid>.lock' - got timeout". Another request or task
    is changing the guest's configuration right now. Attributes (in `details`): lock_file."""


class TaskWaitTimeout(ProxmoxError, errors.Transient):
    """The client stopped waiting for a task before it ended. This is not a failure of the task: it
    may still succeed or fail. The caller must re-read the state and not assume either outcome.

    Attributes (in `details`): upid, last_status (the last status read, if any).
    """


# --- permanent: repeating the same call gives the same answer --------------------------------------


class AuthenticationFailed(ProxmoxError, errors.Permanent):
    """401: the API token is unknown, expired or has a wrong secret."""


class PermissionDenied(ProxmoxError, errors.Permanent):
    """403 "Permission check failed (<path>, <privilege>)": the token lacks a privilege."""


class BadParameters(ProxmoxError, errors.Permanent):
    """400 "Parameter verification failed.". Attributes (in `details`): errors, PVE's message per
    parameter name."""


class DoesNotExist(ProxmoxError, errors.Permanent):
    """PVE's "Configuration file 'nodes/<node>/lxc/<vmid>.conf' does not exist": no such guest on
    that node (it may live on another node). Attributes (in `details`): config_path."""


class AlreadyExists(ProxmoxError, errors.Permanent):
    """PVE's "CT <vmid> already exists on node '<node>'" (or the VM form): the VMID is in use.
    Attributes (in `details`): node, where PVE names it."""


class NotRunning(ProxmoxError, errors.Permanent):
    """PVE's "CT <vmid> not running": a stop or shutdown of a stopped container."""


class AlreadyRunning(ProxmoxError, errors.Permanent):
    """PVE's "CT <vmid> already running": a start of a running container."""


class Rejected(ProxmoxError, errors.Permanent):
    """PVE refused the request for a reason that repeating it will not change: an unknown node or
    storage, protection mode, a method PVE does not implement (501), any other 4xx."""


class TlsVerificationFailed(ProxmoxError, errors.Permanent):
    """The server's certificate did not verify against the configured CA: a configuration error,
    not a network blip."""


class TaskFailed(ProxmoxError, errors.Permanent):
    """A task ended with an exit status other than `OK` or `WARNINGS: n`.

    Attributes (in `details`): upid, exitstatus, log (the task's last log lines, oldest first).
    """


class VmidTaken(ProxmoxError, errors.Permanent):
    """The allocated VMID holds a guest that is not this server's (another server, another
    generation, or something we never made). The driver left it untouched; the caller must mark the
    VMID foreign and allocate another.

    Attributes (in `details`): vmid, node, kind (lxc/qemu), found_server_id, found_generation.
    """


class NotOwned(ProxmoxError, errors.Permanent):
    """The guest at the VMID does not carry this server's ownership marks, so the driver refused to
    change it (VMIDs are reused right after a deletion).

    Attributes (in `details`): vmid, node, found_server_id, found_generation.
    """


class Misplaced(ProxmoxError, errors.Permanent):
    """The server's container exists but on another node than the database allocated (an operator
    migrated it). Attributes (in `details`): vmid, expected_node, node."""


class TemplateMissing(ProxmoxError, errors.Permanent):
    """The template VMID is not an LXC template anywhere in the cluster.
    Attributes (in `details`): template_vmid."""


# --- the translator -----------------------------------------------------------------------------

# PVE's wording, matched on the first line of the message. Order matters: the first match wins, and
# the specific config-file form of "does not exist" must come before the generic refusals.
_TEXTS: tuple[tuple[re.Pattern[str], type[ProxmoxError]], ...] = (
    (re.compile(r"^Configuration file '(?P<config_path>[^']+)' does not exist"), DoesNotExist),
    (re.compile(r"^(?:CT|VM) \d+ already exists(?: on node '(?P<node>[^']+)')?"), AlreadyExists),
    (re.compile(r"^(?:CT|VM) is locked \((?P<lock>[^)]+)\)"), Locked),
    (re.compile(r"^can't lock file '(?P<lock_file>[^']+)' - got timeout"), LockTimeout),
    (re.compile(r"^(?:CT|VM) \d+ not running"), NotRunning),
    (re.compile(r"^(?:CT|VM) \d+ already running"), AlreadyRunning),
    (re.compile(r"^cluster not ready - no quorum"), NoQuorum),
    (re.compile(r"^No route to host"), NodeUnreachable),
    (re.compile(r"^hostname lookup '(?P<node>[^']+)' failed"), Rejected),
    (re.compile(r"^no such cluster node '(?P<node>[^']+)'"), Rejected),
    (re.compile(r"does not exist|protection mode enabled"), Rejected),
)

# Inside a task, these keep their own class; any other failure is `TaskFailed`.
_TASK_CLASSES = (DoesNotExist, AlreadyExists, Locked, LockTimeout, NotRunning, AlreadyRunning, NoQuorum)


def _by_text(message: str) -> tuple[type[ProxmoxError], dict[str, Any]] | None:
    first = message.strip().splitlines()[0] if message.strip() else ""
    for pattern, cls in _TEXTS:
        found = pattern.search(first)
        if found:
            return cls, {k: v for k, v in found.groupdict().items() if v is not None}
    return None


def _by_status(status: int) -> type[ProxmoxError]:
    if status == 401:
        return AuthenticationFailed
    if status == 403:
        return PermissionDenied
    if status == 400:
        return BadParameters
    if status == 595:
        return NodeUnreachable
    if status >= 500 and status != 501:
        return ProxmoxUnavailable
    return Rejected


def classify(status: int | None, message: str) -> tuple[type[ProxmoxError], dict[str, Any]]:
    """The error class for PVE's answer, and the attributes parsed from its text.

    Authentication, permission and parameter errors are decided by status alone: their texts vary
    ("authentication failure", "permission denied - invalid PVE ticket"...) but their meaning does not.
    """
    if status in (400, 401, 403):
        return _by_status(status), {}
    known = _by_text(message)
    if known is not None:
        return known
    if status is None:
        return TaskFailed, {}
    return _by_status(status), {}


def _from_resource(exc: proxmoxer.ResourceException, method: str, path: str) -> ProxmoxError:
    status = int(exc.status_code)
    message = str(exc.content or exc.status_message or "")
    cls, parsed = classify(status, message)
    details: dict[str, Any] = {"status": status, "pve_message": message, "method": method, "path": path}
    details.update(parsed)
    if cls is BadParameters:
        details["errors"] = dict(exc.errors) if isinstance(exc.errors, dict) else {}
    if cls is ProxmoxUnavailable:
        details["cause"] = f"http-{status}"
    return cls(f"Proxmox {method} {path}: {message or status}", **details)


def _from_requests(exc: requests.RequestException, method: str, path: str) -> ProxmoxError:
    where = {"method": method, "path": path}
    if isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return TlsVerificationFailed(f"Proxmox TLS certificate did not verify: {exc}", **where)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        cause = "connect-timeout"
    elif isinstance(exc, requests.exceptions.ReadTimeout):
        cause = "read-timeout"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        cause = "connection"
    else:
        cause = type(exc).__name__
    return ProxmoxUnavailable(f"Proxmox {method} {path}: {cause}: {exc}", cause=cause, **where)


def translate(exc: BaseException, *, method: str, path: str) -> ProxmoxError:
    """The typed error for anything proxmoxer or requests raised while calling `method path`.

    Callers write `raise translate(exc, ...) from exc`, so the original stays in `__cause__`.
    """
    if isinstance(exc, ProxmoxError):
        return exc
    if isinstance(exc, proxmoxer.ResourceException):
        return _from_resource(exc, method, path)
    if isinstance(exc, proxmoxer.AuthenticationError):
        return AuthenticationFailed(f"Proxmox authentication failed: {exc}", method=method, path=path)
    if isinstance(exc, requests.RequestException):
        return _from_requests(exc, method, path)
    return ProxmoxUnavailable(
        f"Proxmox {method} {path}: unexpected {type(exc).__name__}: {exc}",
        cause=type(exc).__name__,
        method=method,
        path=path,
    )


def from_task(upid: str, exitstatus: str, log: Sequence[str]) -> ProxmoxError:
    """The typed error for a task that ended with `exitstatus` (not OK): a lock or state error in
    PVE's known wording keeps its own class (a task can fail because the guest is locked, which is
    worth retrying), anything else is `TaskFailed`."""
    cls, parsed = classify(None, exitstatus)
    if cls not in _TASK_CLASSES:
        cls, parsed = TaskFailed, {}
    details: dict[str, Any] = {
        "status": None,
        "pve_message": exitstatus,
        "upid": upid,
        "exitstatus": exitstatus,
        "log": tuple(log),
    }
    details.update(parsed)
    return cls(f"Proxmox task failed: {exitstatus}", **details)
