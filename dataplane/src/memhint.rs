//! Hints to the memory system for the packet path (ADR 0020): software prefetch, and
//! transparent huge pages for the stream table.
//!
//! - Safe Rust has no prefetch instruction. Ordinary loads used to warm a burst's streams
//!   stall retirement until the line arrives, so nothing else runs meanwhile. A prefetch lets
//!   the processing of earlier packets overlap with the misses of later ones. The instruction
//!   comes from the `prefetch-index` crate, whose API is safe.
//! - A table of 100k streams is 25 MB: 6,250 pages of 4 KiB, several times what the TLB
//!   holds, so nearly every stream a packet touches costs a page walk (two-dimensional
//!   under a hypervisor) before its cache miss. Huge pages of 2 MiB cut that to 13 entries.
//!   Asking for them is a libc call (`madvise`): the one unsafe block here, an FFI boundary
//!   like the DPDK backend's.

#![allow(unsafe_code)]

/// Asks the CPU to bring the cache line holding `*r` into all cache levels. A hint only: it
/// does not read `*r` (no stall, no data dependence); on targets without a prefetch
/// instruction it does nothing.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    prefetch_index::prefetch_index(std::slice::from_ref(r), 0);
}

/// The size of a transparent huge page on the platforms we run on (x86_64, aarch64 with
/// 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the huge-page-aligned part of `v`'s allocation (its whole
/// capacity) with transparent huge pages, as pages are first touched (`madvise`
/// `MADV_HUGEPAGE`; effective when `/sys/kernel/mm/transparent_hugepage/enabled` is
/// `always` or `madvise`). Returns whether the kernel took the advice; an allocation that
/// holds no aligned huge page returns `false` without asking. Contents are unchanged.
pub fn advise_huge_pages<T>(v: &Vec<T>) -> bool {
    let start = v.as_ptr() as usize;
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    let lo = start.next_multiple_of(HUGE_PAGE);
    let hi = (start.saturating_add(bytes) / HUGE_PAGE) * HUGE_PAGE;
    if hi <= lo {
        return false;
    }
    advise_range(lo, hi - lo)
}

#[cfg(target_os = "linux")]
fn advise_range(addr: usize, len: usize) -> bool {
    // SAFETY: [addr, addr + len) lies inside one live allocation (the caller's Vec buffer,
    // rounded inwards to huge-page boundaries). MADV_HUGEPAGE only sets a flag on the mapping;
    // it neither reads nor changes the memory, and on failure nothing changes.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_addr: usize, _len: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The kB of anonymous huge pages backing the mapping that holds `addr`, from
    /// /proc/self/smaps.
    fn anon_huge_kb(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps readable");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    return kb
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse()
                        .unwrap_or(0);
                }
            }
        }
        0
    }

    #[test]
    fn an_advised_table_is_backed_by_huge_pages_once_touched() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .expect("this kernel has transparent huge pages");
        // 16 MiB: at least seven aligned huge pages whatever the allocator's alignment.
        let mut v: Vec<u64> = Vec::with_capacity(2 << 20);
        let advised = advise_huge_pages(&v);
        v.resize(2 << 20, 1);
        let kb = anon_huge_kb(v.as_ptr() as usize + (8 << 20));
        if mode.contains("[never]") {
            assert_eq!(kb, 0, "huge pages although the kernel's mode is never");
        } else {
            assert!(advised, "madvise(MADV_HUGEPAGE) refused (mode: {mode})");
            assert!(
                kb >= 2048,
                "{kb} kB of huge pages after advising (mode: {mode})"
            );
        }
    }

    #[test]
    fn a_table_smaller_than_a_huge_page_is_left_alone() {
        let v: Vec<u8> = Vec::with_capacity(4096);
        assert!(!advise_huge_pages(&v));
    }
}
