//! What the worker runs on, for its ad.
//!
//! GPUs are found through the CUDA driver API (`cudarc`, loaded at run time, so the build needs no
//! CUDA and a host without an NVIDIA driver simply has no GPU). cudarc 0.19 has no NVML binding;
//! the driver API gives the same two facts the ad carries (device name, total memory). CPU hosts
//! are described from `/proc`. Detected once per process.

use std::sync::OnceLock;

use fedai_protocol::Hardware;

/// The host's hardware (cached after the first call).
pub fn detect() -> Hardware {
    static HW: OnceLock<Hardware> = OnceLock::new();
    HW.get_or_init(|| gpu().unwrap_or_else(cpu)).clone()
}

/// The first CUDA device (its name prefixed with the count when there are several), or `None`.
pub fn gpu() -> Option<Hardware> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to open the driver library; nothing is called through it here.
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    result::init().ok()?;
    let count = result::device::get_count().ok()?;
    if count < 1 {
        return None;
    }
    let dev = result::device::get(0).ok()?;
    let name = result::device::get_name(dev).ok()?;
    // SAFETY: `dev` is a valid device handle returned by the driver above.
    let bytes = unsafe { result::device::total_mem(dev) }.ok()?;
    let name = if count > 1 {
        format!("{count}x {name}")
    } else {
        name
    };
    Some(Hardware::Gpu {
        name,
        memory_mib: (bytes / (1024 * 1024)) as u64,
    })
}

/// CPU model, logical cores and memory from `/proc`.
pub fn cpu() -> Hardware {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    Hardware::Cpu {
        name,
        cores,
        memory_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_this_host() {
        // On a host without an NVIDIA driver (CI), detection must fall back to the CPU, not panic.
        match detect() {
            Hardware::Gpu { name, memory_mib } => assert!(!name.is_empty() && memory_mib > 0),
            Hardware::Cpu {
                cores, memory_mib, ..
            } => assert!(cores >= 1 && memory_mib > 0),
        }
        if !std::path::Path::new("/proc/driver/nvidia").exists() {
            assert!(gpu().is_none());
        }
    }
}
