//! Reading the eBPF programs' own per-CPU counters (events submitted, lost, ...).
use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use tcptrace_common::Stat;

pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

impl KernelStats {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelStats> {
        let map = ebpf
            .take_map("STATS")
            .context("STATS map missing from the eBPF object")?;
        Ok(KernelStats {
            map: PerCpuArray::try_from(map)?,
        })
    }

    /// The counter summed over all CPUs.
    pub fn get(&self, stat: Stat) -> u64 {
        self.map
            .get(&(stat as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
