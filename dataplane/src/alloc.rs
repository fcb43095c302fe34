//! Media port allocation: the configured range is split among workers, each worker's slice
//! handing out RTP/RTCP pairs (even port, odd port + 1). Freed pairs go to the back of the
//! queue so a port is not reused while stray packets of its last call may still arrive.

use std::collections::VecDeque;

/// Pairs of one worker's slice of the port range.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    free: VecDeque<u16>,
    lo: u16,
    hi: u16,
}

impl PortAllocator {
    /// All even ports `p` with `lo <= p` and `p + 1 <= hi`.
    pub fn new(lo: u16, hi: u16) -> Self {
        let first = lo + (lo & 1);
        let free = (u32::from(first)..u32::from(hi))
            .step_by(2)
            .map(|p| p as u16)
            .collect();
        PortAllocator { free, lo, hi }
    }

    /// Splits `[min, max]` into `n` disjoint allocators of (nearly) equal size.
    pub fn split(min: u16, max: u16, n: usize) -> Vec<PortAllocator> {
        let first = u32::from(min + (min & 1));
        let pairs = (u32::from(max) + 1 - first) / 2;
        let n = n.max(1) as u32;
        (0..n)
            .map(|w| {
                let a = first + 2 * (w * pairs / n);
                let b = first + 2 * ((w + 1) * pairs / n);
                PortAllocator::new(a as u16, (b - 1) as u16)
            })
            .collect()
    }

    /// Takes the RTP port of a free pair.
    pub fn alloc(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Returns a pair; ports outside this slice, odd ports and double frees are ignored.
    pub fn release(&mut self, rtp_port: u16) {
        if rtp_port < self.lo
            || rtp_port >= self.hi
            || rtp_port & 1 == 1
            || self.free.contains(&rtp_port)
        {
            return;
        }
        self.free.push_back(rtp_port);
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The ports this slice covers, inclusive.
    pub fn range(&self) -> (u16, u16) {
        (self.lo, self.hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_disjoint_and_complete() {
        let parts = PortAllocator::split(30000, 40000, 3);
        let total: usize = parts.iter().map(PortAllocator::available).sum();
        assert_eq!(total, 5000);
        let mut all: Vec<u16> = parts
            .into_iter()
            .flat_map(|mut p| std::iter::from_fn(move || p.alloc()))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 5000);
        assert!(all.iter().all(|p| p % 2 == 0 && *p >= 30000 && *p < 40000));
    }

    #[test]
    fn fifo_reuse_and_bad_release() {
        let mut a = PortAllocator::new(1000, 1005);
        assert_eq!(a.available(), 3);
        let p = a.alloc().expect("free pair");
        assert_eq!(p, 1000);
        a.release(p);
        a.release(p);
        a.release(1001);
        a.release(2000);
        assert_eq!(a.available(), 3);
        assert_eq!(a.alloc(), Some(1002), "freed port goes to the back");
    }

    #[test]
    fn odd_min_rounds_up() {
        let mut a = PortAllocator::new(1001, 1004);
        assert_eq!(a.alloc(), Some(1002));
        assert_eq!(a.alloc(), None);
    }
}
