//! Ethernet II frames (IEEE 802.3) with up to two VLAN tags: IEEE 802.1Q
//! (TPID 0x8100) and IEEE 802.1ad "Q-in-Q" service tags (TPID 0x88a8).
//!
//! The FCS is not expected in the buffer (it is stripped by every capture
//! and socket API we read from).

use super::{get_u16, rd_array, rd_u16, sub, sub_mut, wr_bytes, wr_u16, WireError};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IEEE 802.1Q customer tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IEEE 802.1ad service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// Largest number of stacked VLAN tags accepted.
pub const MAX_VLAN_TAGS: usize = 2;
/// Length of an untagged header.
pub const HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TPID + TCI).
pub const VLAN_TAG_LEN: usize = 4;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    /// Offset of the first EtherType / TPID.
    pub const ETHERTYPE: usize = 12;
}

/// Result of walking the tag stack.
#[derive(Debug, Clone, Copy)]
struct Layout {
    header_len: usize,
    ethertype: u16,
    tags: usize,
}

fn is_tag(ethertype: u16) -> bool {
    ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ
}

fn layout(b: &[u8]) -> Result<Layout, WireError> {
    let mut off = field::ETHERTYPE;
    let mut tags = 0usize;
    loop {
        let ethertype = get_u16(b, off).ok_or(WireError::Truncated)?;
        if !is_tag(ethertype) {
            return Ok(Layout {
                header_len: off + 2,
                ethertype,
                tags,
            });
        }
        if tags == MAX_VLAN_TAGS {
            return Err(WireError::TooManyVlanTags);
        }
        tags += 1;
        off += VLAN_TAG_LEN;
    }
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wrap a buffer without validating it. Accessors never panic, but may
    /// return zeros / empty slices for a malformed buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wrap a buffer, checking that the header and every VLAN tag fit.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        layout(buffer.as_ref())?;
        Ok(EthernetFrame { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn layout(&self) -> Layout {
        layout(self.buffer.as_ref()).unwrap_or(Layout {
            header_len: HEADER_LEN,
            ethertype: 0,
            tags: 0,
        })
    }

    pub fn dst(&self) -> [u8; 6] {
        rd_array(self.buffer.as_ref(), field::DST.start)
    }

    pub fn src(&self) -> [u8; 6] {
        rd_array(self.buffer.as_ref(), field::SRC.start)
    }

    /// Header length including VLAN tags (14, 18 or 22).
    pub fn header_len(&self) -> usize {
        self.layout().header_len
    }

    /// Number of VLAN tags (0..=2).
    pub fn vlan_count(&self) -> usize {
        self.layout().tags
    }

    /// VLAN ID (12 bits) of the outermost tag.
    pub fn vlan_id(&self) -> Option<u16> {
        self.tci(0).map(|tci| tci & 0x0fff)
    }

    /// VLAN ID of the inner tag of a double-tagged frame.
    pub fn inner_vlan_id(&self) -> Option<u16> {
        self.tci(1).map(|tci| tci & 0x0fff)
    }

    /// Priority code point (3 bits) of the outermost tag.
    pub fn vlan_pcp(&self) -> Option<u8> {
        self.tci(0).map(|tci| (tci >> 13) as u8)
    }

    fn tci(&self, idx: usize) -> Option<u16> {
        if idx >= self.layout().tags {
            return None;
        }
        let off = field::ETHERTYPE + 2 + idx * VLAN_TAG_LEN;
        Some(rd_u16(self.buffer.as_ref(), off))
    }

    /// The EtherType of the payload, after any VLAN tags.
    pub fn ethertype(&self) -> u16 {
        self.layout().ethertype
    }

    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        sub(b, self.header_len(), b.len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        wr_bytes(self.buffer.as_mut(), field::DST.start, &mac);
    }

    pub fn set_src(&mut self, mac: [u8; 6]) {
        wr_bytes(self.buffer.as_mut(), field::SRC.start, &mac);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let b = self.buffer.as_mut();
        let end = b.len();
        sub_mut(b, start, end)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// The payload, borrowed for the lifetime of the underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let start = self.header_len();
        let b: &'a [u8] = <T as AsRef<[u8]>>::as_ref(self.buffer);
        sub(b, start, b.len())
    }
}

/// Write an Ethernet header (with one 802.1Q tag when `vlan` is set; the
/// VLAN ID is masked to 12 bits, PCP/DEI are zero) and return its length.
pub fn emit_header(
    buf: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
) -> Result<usize, WireError> {
    let len = if vlan.is_some() {
        HEADER_LEN + VLAN_TAG_LEN
    } else {
        HEADER_LEN
    };
    if buf.len() < len {
        return Err(WireError::Truncated);
    }
    wr_bytes(buf, field::DST.start, &dst);
    wr_bytes(buf, field::SRC.start, &src);
    let mut off = field::ETHERTYPE;
    if let Some(id) = vlan {
        wr_u16(buf, off, ETHERTYPE_VLAN);
        wr_u16(buf, off + 2, id & 0x0fff);
        off += VLAN_TAG_LEN;
    }
    wr_u16(buf, off, ethertype);
    Ok(len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn untagged() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&DST);
        v.extend_from_slice(&SRC);
        v.extend_from_slice(&[0x08, 0x00]);
        v.extend_from_slice(&[0xaa, 0xbb, 0xcc]);
        v
    }

    fn double_tagged() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&DST);
        v.extend_from_slice(&SRC);
        v.extend_from_slice(&[0x88, 0xa8, 0x20, 0x64]); // S-tag pcp 1, vid 100
        v.extend_from_slice(&[0x81, 0x00, 0x00, 0xc8]); // C-tag vid 200
        v.extend_from_slice(&[0x86, 0xdd]);
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn parse_untagged() {
        let buf = untagged();
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.dst(), DST);
        assert_eq!(f.src(), SRC);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.vlan_count(), 0);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn parse_double_tagged() {
        let buf = double_tagged();
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.header_len(), 22);
        assert_eq!(f.vlan_count(), 2);
        assert_eq!(f.vlan_id(), Some(100));
        assert_eq!(f.vlan_pcp(), Some(1));
        assert_eq!(f.inner_vlan_id(), Some(200));
        assert_eq!(f.ethertype(), ETHERTYPE_IPV6);
        assert_eq!(f.payload(), &[1, 2, 3, 4]);
        assert_eq!(f.into_payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn three_tags_rejected() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&DST);
        buf.extend_from_slice(&SRC);
        for _ in 0..3 {
            buf.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
        }
        buf.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(
            EthernetFrame::new_checked(&buf[..]).unwrap_err(),
            WireError::TooManyVlanTags
        );
    }

    #[test]
    fn every_truncation() {
        for buf in [untagged(), double_tagged()] {
            let full = EthernetFrame::new_checked(&buf[..]).unwrap();
            for n in 0..buf.len() {
                match EthernetFrame::new_checked(&buf[..n]) {
                    Ok(f) => {
                        assert_eq!(f.header_len(), full.header_len());
                        assert_eq!(f.ethertype(), full.ethertype());
                        assert_eq!(f.payload().len(), n - f.header_len());
                    }
                    Err(e) => {
                        assert_eq!(e, WireError::Truncated);
                        assert!(n < full.header_len());
                    }
                }
            }
        }
    }

    #[test]
    fn unchecked_garbage_is_harmless() {
        let f = EthernetFrame::new_unchecked(&[0x81u8, 0x00][..]);
        assert_eq!(f.dst(), [0; 6]);
        assert_eq!(f.ethertype(), 0);
        assert!(f.payload().is_empty());
        assert_eq!(f.vlan_id(), None);
    }

    #[test]
    fn setters_and_emit() {
        let mut buf = [0u8; 32];
        assert_eq!(
            emit_header(&mut buf, DST, SRC, Some(0x1abc), ETHERTYPE_ARP),
            Ok(18)
        );
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        assert_eq!(f.vlan_id(), Some(0x0abc));
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        f.set_dst(SRC);
        f.set_src(DST);
        f.payload_mut()[0] = 0x55;
        assert_eq!(f.dst(), SRC);
        assert_eq!(f.src(), DST);
        assert_eq!(f.payload()[0], 0x55);
        assert_eq!(f.payload().len(), 14);
        assert_eq!(
            emit_header(&mut [0u8; 17], DST, SRC, Some(1), ETHERTYPE_IPV4),
            Err(WireError::Truncated)
        );
        assert_eq!(
            emit_header(&mut [0u8; 14], DST, SRC, None, ETHERTYPE_IPV4),
            Ok(14)
        );
    }
}
