"""The seeded chaos run: many servers, several replicas as real processes, faults of every kind.

`python -m zlh_actors.lab.chaos --seed S --replicas R --servers N --minutes M` (see docs/chaos.md),
or in-process `await driver.run(driver.Options(seed=S, ...))`, which returns a `summary.Summary`.

- `plan`: every decision of the run, drawn up front from one `random.Random(seed)`;
- `driver`: the phases (setup, chaos, heal, quiesce, check) and `Options`;
- `fleet`: the replicas as processes, killed, frozen and restarted;
- `client`: the tenants' REST requests, retried, recorded for the invariant checker;
- `streams`: one `/v1/stream` reader per tenant, the servers' states as they change, and the final
  comparison of what each stream delivered with the journal;
- `scenario`: one task per planned server, playing its script;
- `faults`: the fault injector;
- `quiesce`: waiting until the system has finished its work;
- `tally` and `summary`: the counts and the report.

The run's own database comes from `zlh_actors.lab.scratchdb`, which the benchmarks share.
"""
