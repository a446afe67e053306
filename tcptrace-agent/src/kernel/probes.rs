//! The probe table: each probe once, with its methods in order of preference, what each
//! attaches (programs named after their hook and method, see the eBPF crate's
//! `probes/`), what it needs first and what it reads through BTF; and the tracepoints
//! whose record layouts the programs read. `plan` attaches it; `tcptrace probes` prints
//! the outcome.
use tcptrace_common::{
    config::{
        SOURCE_CONNECT_V4, SOURCE_CONNECT_V6, SOURCE_DESTROY, SOURCE_SEGMENTS, SOURCE_TRACKING,
    },
    stats::Guarded,
    Config, TpLayout,
};

use super::{
    attach::Attach,
    btf::Target,
    format::{self, Carries, Want},
    offsets::Reads,
};

/// A tracepoint a program reads, and the fields it needs from the record.
pub struct Tracepoint {
    pub category: &'static str,
    pub event: &'static str,
    pub carries: Carries,
    /// The event's own fields.
    pub extra: &'static [Want],
    pub slot: fn(&mut Config) -> &mut TpLayout,
    /// The program reads its few fields from the record in place instead of copying
    /// the record (a hot tracepoint): the copy's size limit does not apply.
    pub in_place: bool,
}

pub const TRACEPOINTS: [Tracepoint; 10] = [
    Tracepoint {
        category: "sock",
        event: "inet_sock_set_state",
        carries: Carries::SocketAndAddresses,
        extra: &format::SET_STATE_EXTRA,
        slot: |c| &mut c.set_state,
        in_place: false,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_retransmit_skb",
        carries: Carries::SocketAndAddresses,
        extra: &format::RETRANSMIT_SKB_EXTRA,
        slot: |c| &mut c.retransmit_skb,
        in_place: false,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_retransmit_synack",
        carries: Carries::SocketAndAddresses,
        extra: &[],
        slot: |c| &mut c.retransmit_synack,
        in_place: false,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_receive_reset",
        carries: Carries::SocketAndAddresses,
        extra: &[],
        slot: |c| &mut c.receive_reset,
        in_place: false,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_send_reset",
        carries: Carries::Nothing,
        extra: &format::SKADDR_ONLY,
        slot: |c| &mut c.send_reset,
        in_place: false,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_destroy_sock",
        carries: Carries::Nothing,
        extra: &format::SKADDR_ONLY,
        slot: |c| &mut c.destroy_sock,
        in_place: false,
    },
    Tracepoint {
        category: "sock",
        event: "inet_sk_error_report",
        carries: Carries::Addresses,
        extra: &format::ERROR_REPORT_EXTRA,
        slot: |c| &mut c.error_report,
        in_place: false,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_probe",
        carries: Carries::Nothing,
        extra: &format::SKADDR_ONLY,
        slot: |c| &mut c.tcp_probe,
        in_place: true,
    },
    Tracepoint {
        category: "skb",
        event: "kfree_skb",
        carries: Carries::Nothing,
        extra: &format::KFREE_SKB_EXTRA,
        slot: |c| &mut c.kfree_skb,
        in_place: false,
    },
    Tracepoint {
        category: "syscalls",
        event: "sys_exit_connect",
        carries: Carries::Nothing,
        extra: &format::SYSCALL_RET,
        slot: |c| &mut c.sys_exit_connect,
        in_place: false,
    },
];

/// One way of providing a probe.
pub struct Method {
    /// `tp_btf`, `raw_tracepoint`, `tracepoint`, `fentry`, `fexit`, `kprobe`, or the name
    /// of a method that attaches nothing of its own (derived, `socket_storage`, `hash`).
    pub name: &'static str,
    /// Programs to load and attach, all or nothing.
    pub attach: &'static [Attach],
    /// Probes (`probe`, or `probe/method` for a particular method) this method needs
    /// attached first: it derives its information from them or shares their state.
    pub derived_from: &'static [&'static str],
    /// Kernel struct fields read at offsets from BTF.
    pub reads: Reads,
}

pub struct Probe {
    pub name: &'static str,
    /// Without it tcptrace has nothing to show: refuse to start.
    pub required: bool,
    pub purpose: &'static str,
    pub methods: &'static [Method],
    /// The `SOURCES` slot telling the programs which method provides this probe.
    pub source_slot: Option<u32>,
    /// Its `RUNNING`/`RECOVERED` slot where its methods pair a main program with a backup.
    pub guarded: Option<Guarded>,
}

/// The method of a probe on one tracepoint whose programs are named after it:
/// `<event>_btf` (BTF-typed: the socket's own storage, a recursion guard per program),
/// `<event>_raw` (raw: the fallback socket map, a guard per program) and `<event>`
/// (classic: the fallback map, the guard that every classic tracepoint and kprobe on a
/// CPU shares). A BTF-typed program keeps socket state where the state program does,
/// so it needs the state program on its BTF-typed tracepoint too. BTF-typed and raw
/// methods attach a main program and its `_backup`, in that order (`guard.rs` in the
/// eBPF crate: the backup takes the events the main one's own guard skipped).
macro_rules! btf_method {
    ($event:literal, $reads:expr) => {
        Method {
            name: "tp_btf",
            attach: &[
                Attach::BtfTracepoint {
                    program: concat!($event, "_btf"),
                    event: $event,
                },
                Attach::BtfTracepoint {
                    program: concat!($event, "_btf_backup"),
                    event: $event,
                },
            ],
            derived_from: &["socket_tracking/socket_storage"],
            reads: $reads,
        }
    };
}
macro_rules! raw_method {
    ($event:literal, $reads:expr) => {
        Method {
            name: "raw_tracepoint",
            attach: &[
                Attach::RawTracepoint {
                    program: concat!($event, "_raw"),
                    event: $event,
                },
                Attach::RawTracepoint {
                    program: concat!($event, "_raw_backup"),
                    event: $event,
                },
            ],
            derived_from: &[],
            reads: $reads,
        }
    };
}
macro_rules! classic_method {
    ($category:literal, $event:literal) => {
        Method {
            name: "tracepoint",
            attach: &[Attach::Tracepoint {
                program: $event,
                category: $category,
                event: $event,
            }],
            derived_from: &[],
            reads: Reads::Nothing,
        }
    };
}

/// A probe on a tracepoint that passes the socket: BTF-typed, raw, classic, in that
/// order.
macro_rules! socket_probe {
    ($category:literal, $event:literal, $guarded:expr, $reads:expr, $purpose:literal) => {
        Probe {
            name: $event,
            required: false,
            purpose: $purpose,
            methods: &[
                btf_method!($event, $reads),
                raw_method!($event, $reads),
                classic_method!($category, $event),
            ],
            source_slot: None,
            guarded: Some($guarded),
        }
    };
}

/// The connect-error probes: fexit, then kprobe + kretprobe, then the state tracepoint
/// plus `sys_exit_connect` (CLOSE -> SYN_SENT runs inside connect()).
macro_rules! connect_probe {
    ($function:literal, $slot:expr) => {
        Probe {
            name: $function,
            required: false,
            purpose: "connect() errors before a SYN is sent (EADDRNOTAVAIL, ENETUNREACH, ...)",
            methods: &[
                Method {
                    name: "fexit",
                    attach: &[Attach::Fexit {
                        program: concat!($function, "_fexit"),
                        function: $function,
                    }],
                    derived_from: &[],
                    reads: Reads::Nothing,
                },
                Method {
                    name: "kprobe",
                    attach: &[
                        Attach::Kprobe {
                            program: "tcp_connect_kprobe",
                            function: $function,
                        },
                        Attach::Kprobe {
                            program: "tcp_connect_kretprobe",
                            function: $function,
                        },
                    ],
                    derived_from: &[],
                    reads: Reads::Nothing,
                },
                Method {
                    name: "tracepoint",
                    attach: &[Attach::Tracepoint {
                        program: "sys_exit_connect",
                        category: "syscalls",
                        event: "sys_exit_connect",
                    }],
                    derived_from: &["inet_sock_set_state"],
                    reads: Reads::Nothing,
                },
            ],
            source_slot: Some($slot),
            guarded: None,
        }
    };
}

/// The pseudo-probe that says where per-socket state lives (owner, state timing, what
/// was counted): socket-local storage where the state program runs on its BTF-typed
/// tracepoint, else the fallback socket map (`--max-sockets`).
pub const SOCKET_TRACKING: &str = "socket_tracking";

pub const PROBES: [Probe; 14] = [
    Probe {
        name: "inet_sock_set_state",
        required: true,
        purpose: "state changes, handshakes, socket ownership",
        methods: &[
            Method {
                derived_from: &[],
                ..btf_method!("inet_sock_set_state", Reads::Sock)
            },
            raw_method!("inet_sock_set_state", Reads::Sock),
            classic_method!("sock", "inet_sock_set_state"),
        ],
        source_slot: None,
        guarded: Some(Guarded::SetState),
    },
    Probe {
        name: SOCKET_TRACKING,
        required: true,
        purpose: "per-socket state: owner, time in state, what was counted",
        methods: &[
            // Lives and dies with the socket: no capacity, nothing to clean up.
            Method {
                name: "socket_storage",
                attach: &[],
                derived_from: &["inet_sock_set_state/tp_btf"],
                reads: Reads::Nothing,
            },
            // Bounded by --max-sockets; sockets beyond it are counted, untracked.
            Method {
                name: "hash",
                attach: &[],
                derived_from: &[],
                reads: Reads::Nothing,
            },
        ],
        source_slot: Some(SOURCE_TRACKING),
        guarded: None,
    },
    socket_probe!(
        "tcp",
        "tcp_retransmit_skb",
        Guarded::RetransmitSkb,
        Reads::Sock,
        "data and SYN retransmits"
    ),
    socket_probe!(
        "tcp",
        "tcp_retransmit_synack",
        Guarded::RetransmitSynack,
        Reads::Sock,
        "SYN-ACK retransmits"
    ),
    socket_probe!(
        "tcp",
        "tcp_receive_reset",
        Guarded::ReceiveReset,
        Reads::Sock,
        "RSTs received; refused/reset handshakes when BTF is missing"
    ),
    socket_probe!(
        "tcp",
        "tcp_send_reset",
        Guarded::SendReset,
        Reads::Sock,
        "RSTs sent"
    ),
    // Where sockets are tracked in the fallback map, a socket stays tracked from CLOSE
    // until the kernel frees it: an aborting close (SO_LINGER 0, unread data) sends its
    // RST after CLOSE. Socket storage is freed with the socket by the kernel itself.
    Probe {
        name: "tcp_destroy_sock",
        required: false,
        purpose: "ends socket tracking when the kernel frees a socket (RSTs after CLOSE keep their owner)",
        methods: &[
            Method {
                name: "socket_storage",
                attach: &[],
                derived_from: &["socket_tracking/socket_storage"],
                reads: Reads::Nothing,
            },
            // Counts nothing: no backup needed.
            Method {
                name: "raw_tracepoint",
                attach: &[Attach::RawTracepoint {
                    program: "tcp_destroy_sock_raw",
                    event: "tcp_destroy_sock",
                }],
                derived_from: &[],
                reads: Reads::Nothing,
            },
            classic_method!("tcp", "tcp_destroy_sock"),
        ],
        source_slot: Some(SOURCE_DESTROY),
        guarded: None,
    },
    socket_probe!(
        "sock",
        "inet_sk_error_report",
        Guarded::ErrorReport,
        Reads::SockAndError,
        "socket errors: ETIMEDOUT from keep-alive or retransmission timeouts, resets, ICMP"
    ),
    // Samples by delta (a skipped run delays bytes and segments to the next sample or the
    // close): one program per method, no backup.
    Probe {
        name: "tcp_probe",
        required: false,
        purpose: "bytes and data segments sent of open connections, as segments arrive (closes count the rest)",
        methods: &[
            Method {
                name: "tp_btf",
                attach: &[Attach::BtfTracepoint {
                    program: "tcp_probe_btf",
                    event: "tcp_probe",
                }],
                derived_from: &["socket_tracking/socket_storage"],
                reads: Reads::Bytes,
            },
            Method {
                name: "raw_tracepoint",
                attach: &[Attach::RawTracepoint {
                    program: "tcp_probe_raw",
                    event: "tcp_probe",
                }],
                derived_from: &[],
                reads: Reads::Bytes,
            },
            Method {
                reads: Reads::Bytes,
                ..classic_method!("tcp", "tcp_probe")
            },
        ],
        source_slot: None,
        guarded: None,
    },
    socket_probe!(
        "skb",
        "kfree_skb",
        Guarded::KfreeSkb,
        Reads::Drops,
        "TCP packets dropped, with the kernel's reason (Linux 5.17+); final ACKs a full accept queue turned away"
    ),
    // One program per method, no backup (consume_skb.rs in the eBPF crate says why).
    Probe {
        name: "consume_skb",
        required: false,
        purpose: "SYNs a full accept queue turned away (listen overflows at SYN time)",
        methods: &[
            Method {
                name: "tp_btf",
                attach: &[Attach::BtfTracepoint {
                    program: "consume_skb_btf",
                    event: "consume_skb",
                }],
                derived_from: &[],
                reads: Reads::ListenQueue,
            },
            Method {
                name: "raw_tracepoint",
                attach: &[Attach::RawTracepoint {
                    program: "consume_skb_raw",
                    event: "consume_skb",
                }],
                derived_from: &[],
                reads: Reads::ListenQueue,
            },
        ],
        source_slot: None,
        guarded: None,
    },
    connect_probe!("tcp_v4_connect", SOURCE_CONNECT_V4),
    connect_probe!("tcp_v6_connect", SOURCE_CONNECT_V6),
    Probe {
        name: "tcp_rcv_state_process",
        required: false,
        purpose: "flags of segments received in LISTEN/SYN_SENT/SYN_RECV (SYN-ACK, RST, stray ACK)",
        methods: &[
            Method {
                name: "fentry",
                attach: &[Attach::Fentry {
                    program: "tcp_rcv_state_process_fentry",
                    function: "tcp_rcv_state_process",
                }],
                derived_from: &[],
                reads: Reads::SockAndSkbFlags,
            },
            Method {
                name: "kprobe",
                attach: &[Attach::Kprobe {
                    program: "tcp_rcv_state_process_kprobe",
                    function: "tcp_rcv_state_process",
                }],
                derived_from: &[],
                reads: Reads::SockAndSkbFlags,
            },
            // Only RSTs: tcp_receive_reset fires for them, with the tracked state.
            Method {
                name: "tracepoint",
                attach: &[],
                derived_from: &["tcp_receive_reset"],
                reads: Reads::Nothing,
            },
        ],
        source_slot: Some(SOURCE_SEGMENTS),
        guarded: None,
    },
];

/// Check `--probe-method` values against the table; exit-2 material.
pub fn parse_forced(s: &str) -> Result<(String, String), String> {
    let (probe, method) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not PROBE=METHOD"))?;
    let Some(p) = PROBES.iter().find(|p| p.name == probe) else {
        let names: Vec<&str> = PROBES.iter().map(|p| p.name).collect();
        return Err(format!(
            "unknown probe `{probe}`: one of {}",
            names.join(", ")
        ));
    };
    if !p.methods.iter().any(|m| m.name == method) {
        let names: Vec<&str> = p.methods.iter().map(|m| m.name).collect();
        return Err(format!(
            "probe {probe} has no method `{method}`: one of {}",
            names.join(", ")
        ));
    }
    Ok((probe.to_string(), method.to_string()))
}

/// Every kernel type a program of the table is loaded against, once each.
pub fn btf_targets() -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    let attaches = PROBES
        .iter()
        .flat_map(|p| p.methods.iter())
        .flat_map(|m| m.attach);
    for target in attaches.filter_map(Attach::btf_target) {
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

    use super::*;

    /// Every program of the embedded object, by name: its kind and, where its section
    /// names one, its target (`tp_btf/inet_sock_set_state` -> inet_sock_set_state).
    fn programs_in_object() -> BTreeMap<String, (String, Option<String>)> {
        let file = object::File::parse(crate::kernel::EBPF_OBJECT).expect("the embedded object");
        let mut programs = BTreeMap::new();
        for symbol in file.symbols().filter(|s| s.kind() == SymbolKind::Text) {
            let Some(section) = symbol
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
            else {
                continue;
            };
            let section = section.name().unwrap_or_default();
            let (kind, target) = match section.split_once('/') {
                Some((kind, target)) => (kind, Some(target.to_string())),
                None => (section, None),
            };
            let kinds = [
                "tracepoint",
                "raw_tp",
                "tp_btf",
                "fentry",
                "fexit",
                "kprobe",
                "kretprobe",
            ];
            if kinds.contains(&kind) {
                programs.insert(
                    symbol.name().unwrap().to_string(),
                    (kind.to_string(), target),
                );
            }
        }
        programs
    }

    /// The kind of ELF section a table entry's program must be in, and its target.
    fn expected(a: &Attach) -> (&'static [&'static str], Option<&'static str>) {
        match *a {
            Attach::Tracepoint { .. } => (&["tracepoint"], None),
            Attach::RawTracepoint { event, .. } => (&["raw_tp"], Some(event)),
            Attach::BtfTracepoint { event, .. } => (&["tp_btf"], Some(event)),
            Attach::Fentry { function, .. } => (&["fentry"], Some(function)),
            Attach::Fexit { function, .. } => (&["fexit"], Some(function)),
            // One kprobe program serves tcp_v4_connect and tcp_v6_connect: no target.
            Attach::Kprobe { .. } => (&["kprobe", "kretprobe"], None),
        }
    }

    /// The table and the object agree: every program of the object has entries of its
    /// kind, each entry names a program of the object, and a target written in a
    /// program's macro is the one the table attaches it to.
    #[test]
    fn the_table_names_every_program_of_the_object_with_its_kind_and_target() {
        let object = programs_in_object();
        if object.is_empty() {
            eprintln!("skipped: built with AYA_BUILD_SKIP, no eBPF object embedded");
            return;
        }
        let entries: Vec<&Attach> = PROBES
            .iter()
            .flat_map(|p| p.methods.iter())
            .flat_map(|m| m.attach.iter())
            .collect();
        for a in &entries {
            let (kind, target) = object
                .get(a.program())
                .unwrap_or_else(|| panic!("{} is in the table, not in the object", a.program()));
            let (kinds, want) = expected(a);
            assert!(
                kinds.contains(&kind.as_str()),
                "{}: the object has a {kind} program, the table {a:?}",
                a.program()
            );
            if let (Some(target), Some(want)) = (target, want) {
                assert_eq!(
                    target,
                    want,
                    "{}: its macro targets {target}, the table {want}",
                    a.program()
                );
            }
        }
        for program in object.keys() {
            assert!(
                entries.iter().any(|a| a.program() == program),
                "{program} is in the object, in no probe of the table"
            );
        }
    }
}
