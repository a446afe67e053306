//! tcptrace's agent as a library, by pipeline stage: `kernel` (probes, loading,
//! layouts, counter maps, the ring), `event` (records decoded once, and their names),
//! then the sinks: `trace` (the live view), `exporter` (`run`: metrics over HTTP),
//! `doctor` (the checklist); `k8s` names what cgroups say. ARCHITECTURE.md draws it.
pub mod doctor;
pub mod event;
pub mod exporter;
pub mod k8s;
pub mod kernel;
pub mod trace;
