//! RTP data packets (RFC 3550 §5.1), including CSRC lists, the generic
//! header extension (RFC 3550 §5.3.1) and padding.
//!
//! RFC 8285 one-byte / two-byte extension elements are not parsed: the
//! profile word is exposed through [`RtpPacket::extension_profile`] and the
//! raw elements through [`RtpPacket::extension_data`].

use super::{rd_u16, rd_u32, rd_u8, sub, sub_mut, wr_u16, wr_u32, wr_u8, WireError};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;
/// The only RTP version.
pub const VERSION: u8 = 2;

mod field {
    pub const VPXCC: usize = 0;
    pub const MPT: usize = 1;
    pub const SEQ: usize = 2;
    pub const TS: usize = 4;
    pub const SSRC: usize = 8;
    pub const CSRC: usize = 12;
}

const FLAG_P: u8 = 0x20;
const FLAG_X: u8 = 0x10;
const CC_MASK: u8 = 0x0f;
const FLAG_M: u8 = 0x80;
const PT_MASK: u8 = 0x7f;

/// A read/write view of an RTP packet.
#[derive(Debug, Clone)]
pub struct RtpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RtpPacket<T> {
    /// Wrap a buffer without validating it. Accessors never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        RtpPacket { buffer }
    }

    /// Wrap a buffer, validating version, CSRC list, extension and padding.
    ///
    /// Errors: `Truncated` (fixed header or CSRC list does not fit),
    /// `BadVersion`, `BadExtension` (extension header or data does not fit),
    /// `BadPadding` (pad count 0 or larger than what follows the header).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = RtpPacket { buffer };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != VERSION {
            return Err(WireError::BadVersion);
        }
        let csrc_end = self.csrc_end();
        if csrc_end > b.len() {
            return Err(WireError::Truncated);
        }
        if self.extension() {
            let ext_end = csrc_end + 4;
            if ext_end > b.len() {
                return Err(WireError::BadExtension);
            }
            let words = usize::from(rd_u16(b, csrc_end + 2));
            if ext_end + words * 4 > b.len() {
                return Err(WireError::BadExtension);
            }
        }
        if self.padding() {
            let pad = self.padding_len();
            let after_header = b.len() - self.header_len();
            if pad == 0 || pad > after_header {
                return Err(WireError::BadPadding);
            }
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn csrc_end(&self) -> usize {
        field::CSRC + usize::from(self.csrc_count()) * 4
    }

    pub fn version(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::VPXCC) >> 6
    }

    pub fn padding(&self) -> bool {
        rd_u8(self.buffer.as_ref(), field::VPXCC) & FLAG_P != 0
    }

    pub fn extension(&self) -> bool {
        rd_u8(self.buffer.as_ref(), field::VPXCC) & FLAG_X != 0
    }

    pub fn csrc_count(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::VPXCC) & CC_MASK
    }

    pub fn marker(&self) -> bool {
        rd_u8(self.buffer.as_ref(), field::MPT) & FLAG_M != 0
    }

    pub fn payload_type(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::MPT) & PT_MASK
    }

    pub fn sequence_number(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::SEQ)
    }

    pub fn timestamp(&self) -> u32 {
        rd_u32(self.buffer.as_ref(), field::TS)
    }

    pub fn ssrc(&self) -> u32 {
        rd_u32(self.buffer.as_ref(), field::SSRC)
    }

    /// The `i`-th contributing source, if `i < csrc_count()`.
    pub fn csrc(&self, i: usize) -> Option<u32> {
        if i >= usize::from(self.csrc_count()) {
            return None;
        }
        let off = field::CSRC + i * 4;
        let end = off + 4;
        if end > self.buffer.as_ref().len() {
            return None;
        }
        Some(rd_u32(self.buffer.as_ref(), off))
    }

    /// All contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + '_ {
        (0..usize::from(self.csrc_count())).filter_map(move |i| self.csrc(i))
    }

    /// The extension profile word ("defined by profile"; 0xBEDE for RFC 8285
    /// one-byte elements, 0x100x for two-byte elements).
    pub fn extension_profile(&self) -> Option<u16> {
        if !self.extension() {
            return None;
        }
        crate::wire::get_u16(self.buffer.as_ref(), self.csrc_end())
    }

    /// The extension data (length-field × 4 bytes) after the 4-byte
    /// extension header.
    pub fn extension_data(&self) -> Option<&[u8]> {
        if !self.extension() {
            return None;
        }
        let b = self.buffer.as_ref();
        let start = self.csrc_end() + 4;
        let words = usize::from(crate::wire::get_u16(b, self.csrc_end() + 2)?);
        b.get(start..start + words * 4)
    }

    /// Fixed header + CSRC list + extension, in bytes.
    pub fn header_len(&self) -> usize {
        let mut len = self.csrc_end();
        if self.extension() {
            let words = usize::from(rd_u16(self.buffer.as_ref(), len + 2));
            len += 4 + words * 4;
        }
        len
    }

    /// Number of padding bytes at the end (0 when the P bit is clear).
    pub fn padding_len(&self) -> usize {
        if !self.padding() {
            return 0;
        }
        let b = self.buffer.as_ref();
        b.last().map_or(0, |&n| usize::from(n))
    }

    /// Start and end of the payload, clamped so that they are always valid.
    fn payload_range(&self) -> (usize, usize) {
        let len = self.buffer.as_ref().len();
        let start = self.header_len().min(len);
        let end = len.saturating_sub(self.padding_len()).max(start);
        (start, end)
    }

    /// The payload, without header and padding.
    pub fn payload(&self) -> &[u8] {
        let (start, end) = self.payload_range();
        sub(self.buffer.as_ref(), start, end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RtpPacket<T> {
    pub fn set_marker(&mut self, marker: bool) {
        let b = rd_u8(self.buffer.as_ref(), field::MPT);
        let b = if marker { b | FLAG_M } else { b & !FLAG_M };
        wr_u8(self.buffer.as_mut(), field::MPT, b);
    }

    /// Set the payload type (masked to 7 bits), preserving the marker.
    pub fn set_payload_type(&mut self, pt: u8) {
        let b = rd_u8(self.buffer.as_ref(), field::MPT);
        wr_u8(
            self.buffer.as_mut(),
            field::MPT,
            (b & FLAG_M) | (pt & PT_MASK),
        );
    }

    pub fn set_sequence_number(&mut self, seq: u16) {
        wr_u16(self.buffer.as_mut(), field::SEQ, seq);
    }

    pub fn set_timestamp(&mut self, ts: u32) {
        wr_u32(self.buffer.as_mut(), field::TS, ts);
    }

    pub fn set_ssrc(&mut self, ssrc: u32) {
        wr_u32(self.buffer.as_mut(), field::SSRC, ssrc);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = self.payload_range();
        sub_mut(self.buffer.as_mut(), start, end)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> RtpPacket<&'a T> {
    /// The payload (without padding), borrowed for the lifetime of the
    /// underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let (start, end) = self.payload_range();
        sub(<T as AsRef<[u8]>>::as_ref(self.buffer), start, end)
    }
}

/// Write a 12-byte RTP header (version 2, no padding, no extension, no
/// CSRCs) and return 12. `pt` is masked to 7 bits.
pub fn emit_header(
    buf: &mut [u8],
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
) -> Result<usize, WireError> {
    let hdr = buf.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
    wr_u8(hdr, field::VPXCC, VERSION << 6);
    wr_u8(hdr, field::MPT, 0);
    let mut p = RtpPacket::new_unchecked(hdr);
    p.set_marker(marker);
    p.set_payload_type(pt);
    p.set_sequence_number(seq);
    p.set_timestamp(ts);
    p.set_ssrc(ssrc);
    Ok(HEADER_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// V=2 P=1 X=1 CC=2, M=1 PT=111, seq 0x1234, ts 0xdeadbeef,
    /// ssrc 0x11223344, csrcs 0xaaaaaaaa 0xbbbbbbbb, extension 0xBEDE with one
    /// word, 3-byte payload, 3 bytes of padding.
    fn sample() -> Vec<u8> {
        vec![
            0xb2, 0xef, 0x12, 0x34, // V P X CC, M PT, seq
            0xde, 0xad, 0xbe, 0xef, // ts
            0x11, 0x22, 0x33, 0x44, // ssrc
            0xaa, 0xaa, 0xaa, 0xaa, // csrc 0
            0xbb, 0xbb, 0xbb, 0xbb, // csrc 1
            0xbe, 0xde, 0x00, 0x01, // ext profile, 1 word
            0x10, 0xff, 0x00, 0x00, // one-byte element id 1 len 1 + padding
            0x01, 0x02, 0x03, // payload
            0x00, 0x00, 0x03, // padding (count 3)
        ]
    }

    #[test]
    fn parse_full_featured() {
        let buf = sample();
        let p = RtpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 2);
        assert!(p.padding());
        assert!(p.extension());
        assert_eq!(p.csrc_count(), 2);
        assert!(p.marker());
        assert_eq!(p.payload_type(), 111);
        assert_eq!(p.sequence_number(), 0x1234);
        assert_eq!(p.timestamp(), 0xdead_beef);
        assert_eq!(p.ssrc(), 0x1122_3344);
        assert_eq!(p.csrc(0), Some(0xaaaa_aaaa));
        assert_eq!(p.csrc(1), Some(0xbbbb_bbbb));
        assert_eq!(p.csrc(2), None);
        assert_eq!(p.csrcs().count(), 2);
        assert_eq!(p.extension_profile(), Some(0xbede));
        assert_eq!(p.extension_data(), Some(&[0x10, 0xff, 0, 0][..]));
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.padding_len(), 3);
        assert_eq!(p.payload(), &[1, 2, 3]);
        assert_eq!(p.into_payload(), &[1, 2, 3]);
    }

    #[test]
    fn parse_minimal() {
        let mut buf = [0u8; 14];
        emit_header(&mut buf, 0, false, 7, 160, 42).unwrap();
        buf[12] = 0xd5;
        buf[13] = 0x55;
        let p = RtpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload_type(), 0);
        assert!(!p.marker());
        assert_eq!(p.extension_profile(), None);
        assert_eq!(p.extension_data(), None);
        assert_eq!(p.header_len(), 12);
        assert_eq!(p.payload(), &[0xd5, 0x55]);
    }

    #[test]
    fn invalid_fields() {
        let good = sample();
        let err = |b: &[u8]| RtpPacket::new_checked(b).unwrap_err();
        let mut b = good.clone();
        b[0] = (b[0] & 0x3f) | 0x40; // version 1
        assert_eq!(err(&b), WireError::BadVersion);
        let mut b = good.clone();
        *b.last_mut().unwrap() = 0;
        assert_eq!(err(&b), WireError::BadPadding);
        let mut b = good.clone();
        *b.last_mut().unwrap() = 7; // 6 bytes follow the header
        assert_eq!(err(&b), WireError::BadPadding);
        *b.last_mut().unwrap() = 6; // padding may consume the whole payload
        let p = RtpPacket::new_checked(&b[..]).unwrap();
        assert!(p.payload().is_empty());
        let mut b = good.clone();
        b[0] = (b[0] & 0xf0) | 0x0f; // 15 CSRCs = 72 bytes > 34
        assert_eq!(err(&b), WireError::Truncated);
        let mut b = good.clone();
        b[22..24].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(err(&b), WireError::BadExtension);
        // Extension header itself missing.
        let mut b = [0u8; 12];
        b[0] = 0x90;
        assert_eq!(err(&b), WireError::BadExtension);
    }

    #[test]
    fn every_truncation() {
        let buf = sample();
        for n in 0..buf.len() {
            if let Ok(p) = RtpPacket::new_checked(&buf[..n]) {
                // Any prefix that still parses must be self-consistent.
                assert!(p.header_len() + p.padding_len() + p.payload().len() == n);
                assert_eq!(p.ssrc(), 0x1122_3344);
                assert_eq!(p.csrc(1), Some(0xbbbb_bbbb));
            }
        }
        assert!(RtpPacket::new_checked(&buf[..11]).is_err());
        // Without the P bit any prefix past the header parses.
        let mut np = buf.clone();
        np[0] &= !FLAG_P;
        for n in 0..np.len() {
            let r = RtpPacket::new_checked(&np[..n]);
            assert_eq!(r.is_ok(), n >= 28, "n = {n}");
        }
    }

    #[test]
    fn unchecked_garbage_is_harmless() {
        let garbage = [0xffu8; 5];
        let p = RtpPacket::new_unchecked(&garbage[..]);
        assert!(p.payload().is_empty());
        assert_eq!(p.csrc(3), None);
        assert_eq!(p.extension_data(), None);
        let _ = (
            p.header_len(),
            p.ssrc(),
            p.timestamp(),
            p.extension_profile(),
        );
    }

    #[test]
    fn setters() {
        let mut buf = sample();
        let mut p = RtpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_marker(false);
        p.set_payload_type(0xff);
        p.set_sequence_number(1);
        p.set_timestamp(2);
        p.set_ssrc(3);
        assert!(!p.marker());
        assert_eq!(p.payload_type(), 0x7f);
        p.set_payload_type(8);
        p.set_marker(true);
        assert!(p.marker());
        assert_eq!(p.payload_type(), 8);
        assert_eq!((p.sequence_number(), p.timestamp(), p.ssrc()), (1, 2, 3));
        p.payload_mut().copy_from_slice(&[7, 8, 9]);
        assert_eq!(p.payload(), &[7, 8, 9]);
        assert_eq!(p.csrc_count(), 2);
        assert!(p.padding() && p.extension());
        assert_eq!(
            emit_header(&mut [0u8; 11], 0, false, 0, 0, 0),
            Err(WireError::Truncated)
        );
    }
}
