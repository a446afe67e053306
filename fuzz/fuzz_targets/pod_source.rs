//! The pod-name sources turn JSON from the kubelet or the API server into names: a v1
//! PodList (the kubelet's `/pods`), and pods as kube's watcher hands them over (decoded
//! by serde from a list or a watch event, then applied as list and watch events).
//! Whatever the pods say, applying them must never panic and never keep more names
//! than pods and containers were given.
#![no_main]
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tcptrace_agent::k8s::{
    api::{Event, Listing},
    pod_names::{self, Pod},
};

fuzz_target!(|data: &[u8]| {
    let names = pod_names::Shared::default();
    if let Ok(list) = pod_names::parse_list(data) {
        let entries = pod_names::entries(&list.items);
        names.write().unwrap().replace_all(entries, Instant::now());
    }
    // Each line a pod, as the watcher's list (Init..InitDone) and then its watch
    // (Apply, Delete) would give them.
    let pods: Vec<Pod> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    let mut listing = Listing::default();
    listing.apply(Event::Init, &names);
    for pod in &pods {
        listing.apply(Event::InitApply(pod.clone()), &names);
    }
    listing.apply(Event::InitDone, &names);
    for (i, pod) in pods.into_iter().enumerate() {
        let event = if i % 2 == 0 {
            Event::Apply(pod)
        } else {
            Event::Delete(pod)
        };
        listing.apply(event, &names);
    }
    let names = names.read().unwrap();
    assert!(names.pods.len() <= data.len() && names.containers.len() <= data.len());
});
