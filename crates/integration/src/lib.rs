//! The scenarios of docs/scenarios.md, each an integration test named by its id, run against
//! real etcd and PostgreSQL processes started by `stolon-testkit`. The tests live in
//! `tests/`; this library is empty.
