//! Process-wide tuning of glibc's `malloc` for tensor workloads (issue 12).
//!
//! A forward or training step on the CPU allocates and frees hundreds of buffers of 0.5–10 MB.
//! glibc serves each of those with a fresh `mmap` (its threshold starts at 128 KiB) and gives the
//! pages back on `free`, so every buffer is page-faulted in again, and freeing costs TLB
//! shoot-downs across threads: 10–15 % of a medium FLUX forward on Flex (docs/benchmarks.md,
//! "Slice 5"). [`retain_freed_memory`] raises the `mmap` threshold to its maximum and stops the
//! heap from being trimmed, so freed buffers are reused in place. The peak resident memory does
//! not grow (the medium training step peaks at the same 1.15 GiB), but memory freed after the
//! peak stays with the process until it exits.
//!
//! It changes process state, so the library never calls it on its own: the `premier` command, the
//! examples and the benches do, first thing; applications embedding premier may do the same.

/// glibc's largest `M_MMAP_THRESHOLD` on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB):
/// larger buffers keep their own mappings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_MAX: libc::c_int = 32 * 1024 * 1024;

/// Keeps freed memory in the process for reuse instead of returning it to the system at once.
/// Returns whether the allocator took both settings: false on platforms other than Linux with
/// glibc, where it does nothing.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            mmap == 1 && trim == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_both_settings() {
        assert!(retain_freed_memory());
    }
}
