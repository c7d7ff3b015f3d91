"""Model-based torture suite (issue 7, "The proof").

A real daemon (`fileconveyor run` as a subprocess) watches two source trees and publishes them to
three real servers (a local directory, OpenSSH's sshd, S3 on moto) through overlapping rules,
unique names, CSS rewriting and deletion after sync. A seeded generator changes the trees and
injects faults (kill -9, server outages, a full destination file system, an inotify overflow);
after each round, once the daemon is quiet, every destination, every synced_files row and every
queue is compared with what a model of the trees says they must hold.

Layout: `model.py` (pure: what the destinations must hold), `ops.py` (the operations on disk and
in the model), `world.py` (servers, config, daemon, faults, readers), `invariants.py` (the checks),
`runner.py` (rounds, reporting, the command line behind scripts/torture.sh).
"""
