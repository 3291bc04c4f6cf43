"""The invariant checker: after a run, once the system is quiescent, every violation of the seven
invariants zlh-actors promises (docs/invariants.md defines each precisely).

    report = await invariants.check(pool, lab.cluster, log)
    assert report.ok, report.table()

`check` only reads (the database in one snapshot, then fakepve's model) and hands the snapshots to
pure functions, one module per concern: `clients` (1: idempotent creates, 7: tenant isolation),
`containers` (2 and 3: Proxmox against the records; `check_containers` is reusable by any control
plane that can list its records), `allocations` (4), `journals` (5), `commands` (6). Each reports
every violation it finds, not only the first, so a run's table shows the whole damage. A scenario
driver records what its clients asked and saw in a `ClientLog`.
"""

from zlh_actors.lab.invariants.containers import check_containers
from zlh_actors.lab.invariants.model import ClientLog, Container, Record, Report, Violation
from zlh_actors.lab.invariants.read import check, check_snapshot, read_containers, read_database

__all__ = [
    "ClientLog",
    "Container",
    "Record",
    "Report",
    "Violation",
    "check",
    "check_containers",
    "check_snapshot",
    "read_containers",
    "read_database",
]
