//! tcptrace's agent as a library: the `tcptrace` binary's commands, and the pieces the
//! fuzz targets and benchmarks exercise directly.
pub mod attach;
pub mod btf;
pub mod census;
pub mod clock;
pub mod doctor;
pub mod events;
pub mod exposition;
pub mod filter;
pub mod http;
pub mod kernel_counters;
pub mod metrics;
pub mod offsets;
pub mod output;
pub mod privileges;
pub mod probe_report;
pub mod probes;
pub mod ring;
pub mod run;
pub mod settings;
pub mod sock_diag;
pub mod sysctl;
pub mod timeouts;
pub mod tp_format;
pub mod trace;
pub mod tracefs;
pub mod workload;
