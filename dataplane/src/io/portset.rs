//! A set of port-handle slots as one bit each (8 KiB per address): the ports a kernel-bypass
//! backend has open, so that opening one twice fails as a socket bind would. The receive path
//! does not consult it: a datagram for a closed port carries that port's handle, which names
//! no stream in the worker's table, and is dropped there as for an unknown stream.

/// Slots `0..len` (fixed at creation), each open or not.
#[derive(Debug, Clone)]
pub struct PortSet {
    words: Vec<u64>,
    len: usize,
}

impl PortSet {
    /// `len` slots, none open.
    pub fn new(len: usize) -> Self {
        PortSet {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Whether `slot` is open (slots beyond the set are not).
    #[inline]
    pub fn contains(&self, slot: usize) -> bool {
        self.words
            .get(slot / 64)
            .is_some_and(|w| (w >> (slot % 64)) & 1 == 1)
    }

    /// Opens `slot`; false if it was open already or lies beyond the set.
    pub fn insert(&mut self, slot: usize) -> bool {
        if slot >= self.len {
            return false;
        }
        let (w, bit) = (&mut self.words[slot / 64], 1u64 << (slot % 64));
        let fresh = *w & bit == 0;
        *w |= bit;
        fresh
    }

    /// Closes `slot` (nothing happens if it was not open).
    pub fn remove(&mut self, slot: usize) {
        if let Some(w) = self.words.get_mut(slot / 64) {
            *w &= !(1u64 << (slot % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PortSet;

    #[test]
    fn slots_open_and_close_independently() {
        let mut s = PortSet::new(2 << 16);
        for slot in [0, 1, 63, 64, 65_535, 65_536, (2 << 16) - 1] {
            assert!(!s.contains(slot), "{slot} starts closed");
            assert!(s.insert(slot), "{slot} opens");
            assert!(!s.insert(slot), "{slot} was open already");
            assert!(s.contains(slot));
        }
        s.remove(64);
        assert!(!s.contains(64));
        assert!(s.contains(63) && s.contains(65_535), "neighbours stay open");
        s.remove(64);
        assert!(!s.contains(64), "closing twice is harmless");
    }

    #[test]
    fn slots_beyond_the_set_are_never_open() {
        let mut s = PortSet::new(100);
        assert!(!s.insert(100));
        assert!(!s.insert(usize::MAX));
        assert!(!s.contains(100));
        assert!(!s.contains(usize::MAX));
        s.remove(usize::MAX);
        assert!(s.insert(99) && s.contains(99));
        assert!(
            !s.contains(127),
            "bits past len in the last word stay closed"
        );
    }
}
