//! RTCP compound packets (RFC 3550 §6): SR, RR, SDES, BYE and APP, plus
//! generic transport / payload-specific feedback (RFC 4585 §6.1, PT 205 and
//! 206) and extended reports (RFC 3611, PT 207) seen as opaque packets with
//! a sender SSRC.
//!
//! [`RtcpCompound::new`] walks a compound packet by each packet's length
//! field. Every packet it yields has been fully validated (version, length,
//! padding, and for the typed packets that their counts fit the length), so
//! the typed views and their iterators never fail or panic afterwards.

use core::iter::FusedIterator;
use core::slice::ChunksExact;

use super::{rd_array, rd_u16, rd_u32, rd_u8, sub, wr_u32, WireError};

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
/// Generic transport-layer feedback (RFC 4585).
pub const PT_RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585).
pub const PT_PSFB: u8 = 206;
/// Extended reports (RFC 3611).
pub const PT_XR: u8 = 207;

/// SDES item types (RFC 3550 §6.5).
pub const SDES_END: u8 = 0;
pub const SDES_CNAME: u8 = 1;
pub const SDES_NAME: u8 = 2;
pub const SDES_EMAIL: u8 = 3;
pub const SDES_PHONE: u8 = 4;
pub const SDES_LOC: u8 = 5;
pub const SDES_TOOL: u8 = 6;
pub const SDES_NOTE: u8 = 7;
pub const SDES_PRIV: u8 = 8;

/// Length of the common header (V/P/count, PT, length).
pub const HEADER_LEN: usize = 4;
/// Length of one reception report block.
pub const REPORT_BLOCK_LEN: usize = 24;
/// Sender SSRC plus the 20-byte sender info of an SR.
const SR_FIXED_LEN: usize = 24;
const VERSION: u8 = 2;

mod field {
    pub const VPC: usize = 0;
    pub const PT: usize = 1;
    pub const LENGTH: usize = 2;
}

/// One validated RTCP packet inside a compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    /// Exactly `len_bytes()` bytes.
    buf: &'a [u8],
}

/// Bounds of the SDES chunk at `pos` in `body`: returns the end of its item
/// list (the offset of the terminating null octet) and the offset of the
/// next chunk (after the null octets padding to a 32-bit boundary).
fn sdes_chunk_bounds(body: &[u8], pos: usize) -> Result<(usize, usize), WireError> {
    let items_start = pos
        .checked_add(4)
        .filter(|&e| e <= body.len())
        .ok_or(WireError::BadLength)?;
    let mut p = items_start;
    loop {
        let kind = *body.get(p).ok_or(WireError::BadLength)?;
        if kind == SDES_END {
            let next = (p + 4) & !3;
            if next > body.len() {
                return Err(WireError::BadLength);
            }
            return Ok((p, next));
        }
        let len = usize::from(*body.get(p + 1).ok_or(WireError::BadLength)?);
        p += 2 + len;
    }
}

impl<'a> RtcpPacket<'a> {
    /// Parse and validate the first RTCP packet in `buf` (which may hold
    /// further packets after it).
    ///
    /// Errors: `Truncated` (header or length field overruns `buf`),
    /// `BadVersion`, `BadPadding` (pad count 0 or larger than the body),
    /// `BadLength` (an SR/RR/BYE count, SDES chunk list, or APP/feedback
    /// fixed part does not fit the packet length).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let b0 = rd_u8(buf, field::VPC);
        if b0 >> 6 != VERSION {
            return Err(WireError::BadVersion);
        }
        let len = (usize::from(rd_u16(buf, field::LENGTH)) + 1) * 4;
        let buf = buf.get(..len).ok_or(WireError::Truncated)?;
        let pkt = RtcpPacket { buf };
        if pkt.padding() {
            let pad = pkt.padding_len();
            if pad == 0 || pad > len - HEADER_LEN {
                return Err(WireError::BadPadding);
            }
        }
        pkt.check_body()?;
        Ok(pkt)
    }

    fn check_body(&self) -> Result<(), WireError> {
        let body = self.body();
        let count = usize::from(self.count());
        let need = match self.packet_type() {
            PT_SR => SR_FIXED_LEN + count * REPORT_BLOCK_LEN,
            PT_RR => 4 + count * REPORT_BLOCK_LEN,
            PT_SDES => {
                let mut pos = 0;
                for _ in 0..count {
                    pos = sdes_chunk_bounds(body, pos)?.1;
                }
                pos
            }
            PT_BYE => {
                let ssrcs = count * 4;
                match body.get(ssrcs) {
                    Some(&reason_len) => ssrcs + 1 + usize::from(reason_len),
                    None => ssrcs,
                }
            }
            PT_APP | PT_RTPFB | PT_PSFB => 8,
            PT_XR => 4,
            _ => 0,
        };
        if need > body.len() {
            return Err(WireError::BadLength);
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        rd_u8(self.buf, field::VPC) >> 6
    }

    pub fn padding(&self) -> bool {
        rd_u8(self.buf, field::VPC) & 0x20 != 0
    }

    /// The 5-bit count field: report count (SR/RR), source count
    /// (SDES/BYE), subtype (APP) or FMT (feedback).
    pub fn count(&self) -> u8 {
        rd_u8(self.buf, field::VPC) & 0x1f
    }

    pub fn packet_type(&self) -> u8 {
        rd_u8(self.buf, field::PT)
    }

    /// The raw length field (32-bit words minus one).
    pub fn length_field(&self) -> u16 {
        rd_u16(self.buf, field::LENGTH)
    }

    /// Length of this packet in bytes, header and padding included.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Number of padding bytes (0 when the P bit is clear).
    pub fn padding_len(&self) -> usize {
        if self.padding() {
            self.buf.last().map_or(0, |&n| usize::from(n))
        } else {
            0
        }
    }

    /// The whole packet, header and padding included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The bytes after the 4-byte header, without padding.
    pub fn body(&self) -> &'a [u8] {
        let end = self.buf.len().saturating_sub(self.padding_len());
        sub(self.buf, HEADER_LEN, end)
    }

    /// The SSRC of the packet sender: SR/RR/APP/RTPFB/PSFB/XR sender field,
    /// the first SDES chunk or the first BYE source. `None` for other packet
    /// types or when the count is zero.
    pub fn sender_ssrc(&self) -> Option<u32> {
        match self.packet_type() {
            PT_SR | PT_RR | PT_APP | PT_RTPFB | PT_PSFB | PT_XR => {}
            PT_SDES | PT_BYE if self.count() > 0 => {}
            _ => return None,
        }
        let body = self.body();
        (body.len() >= 4).then(|| rd_u32(body, 0))
    }

    pub fn sender_report(&self) -> Option<SenderReport<'a>> {
        (self.packet_type() == PT_SR).then_some(SenderReport { pkt: *self })
    }

    pub fn receiver_report(&self) -> Option<ReceiverReport<'a>> {
        (self.packet_type() == PT_RR).then_some(ReceiverReport { pkt: *self })
    }

    pub fn sdes(&self) -> Option<Sdes<'a>> {
        (self.packet_type() == PT_SDES).then_some(Sdes { pkt: *self })
    }

    pub fn bye(&self) -> Option<Bye<'a>> {
        (self.packet_type() == PT_BYE).then_some(Bye { pkt: *self })
    }

    pub fn app(&self) -> Option<App<'a>> {
        (self.packet_type() == PT_APP).then_some(App { pkt: *self })
    }

    pub fn feedback(&self) -> Option<Feedback<'a>> {
        matches!(self.packet_type(), PT_RTPFB | PT_PSFB).then_some(Feedback { pkt: *self })
    }

    /// The typed view matching the packet type.
    pub fn view(&self) -> RtcpView<'a> {
        let pkt = *self;
        match self.packet_type() {
            PT_SR => RtcpView::SenderReport(SenderReport { pkt }),
            PT_RR => RtcpView::ReceiverReport(ReceiverReport { pkt }),
            PT_SDES => RtcpView::Sdes(Sdes { pkt }),
            PT_BYE => RtcpView::Bye(Bye { pkt }),
            PT_APP => RtcpView::App(App { pkt }),
            PT_RTPFB | PT_PSFB => RtcpView::Feedback(Feedback { pkt }),
            _ => RtcpView::Other(pkt),
        }
    }
}

/// A typed RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpView<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    Sdes(Sdes<'a>),
    Bye(Bye<'a>),
    App(App<'a>),
    Feedback(Feedback<'a>),
    Other(RtcpPacket<'a>),
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock<'a> {
    buf: &'a [u8],
}

impl<'a> ReportBlock<'a> {
    /// View the first 24 bytes of `buf` as a report block.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        let buf = buf.get(..REPORT_BLOCK_LEN).ok_or(WireError::Truncated)?;
        Ok(ReportBlock { buf })
    }

    /// SSRC of the source this block reports on.
    pub fn ssrc(&self) -> u32 {
        rd_u32(self.buf, 0)
    }

    pub fn fraction_lost(&self) -> u8 {
        rd_u8(self.buf, 4)
    }

    /// Cumulative number of packets lost (24-bit signed, may be negative
    /// because of duplicates).
    pub fn cumulative_lost(&self) -> i32 {
        let [a, b, c] = rd_array::<3>(self.buf, 5);
        i32::from_be_bytes([a, b, c, 0]) >> 8
    }

    /// Extended highest sequence number received.
    pub fn highest_seq(&self) -> u32 {
        rd_u32(self.buf, 8)
    }

    pub fn jitter(&self) -> u32 {
        rd_u32(self.buf, 12)
    }

    /// Middle 32 bits of the NTP timestamp of the last SR received.
    pub fn lsr(&self) -> u32 {
        rd_u32(self.buf, 16)
    }

    /// Delay since last SR, in units of 1/65536 s.
    pub fn dlsr(&self) -> u32 {
        rd_u32(self.buf, 20)
    }
}

/// Iterator over the report blocks of an SR or RR.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    inner: ChunksExact<'a, u8>,
}

impl<'a> ReportBlocks<'a> {
    fn new(body: &'a [u8], start: usize, count: u8) -> Self {
        let end = start + usize::from(count) * REPORT_BLOCK_LEN;
        ReportBlocks {
            inner: sub(body, start, end).chunks_exact(REPORT_BLOCK_LEN),
        }
    }
}

impl<'a> Iterator for ReportBlocks<'a> {
    type Item = ReportBlock<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|buf| ReportBlock { buf })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}
impl FusedIterator for ReportBlocks<'_> {}

/// Sender report (PT 200, RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pkt: RtcpPacket<'a>,
}

impl<'a> SenderReport<'a> {
    pub fn packet(&self) -> RtcpPacket<'a> {
        self.pkt
    }

    pub fn ssrc(&self) -> u32 {
        rd_u32(self.pkt.body(), 0)
    }

    /// 64-bit NTP timestamp (seconds since 1900 in the upper 32 bits).
    pub fn ntp_timestamp(&self) -> u64 {
        u64::from_be_bytes(rd_array::<8>(self.pkt.body(), 4))
    }

    pub fn rtp_timestamp(&self) -> u32 {
        rd_u32(self.pkt.body(), 12)
    }

    pub fn packet_count(&self) -> u32 {
        rd_u32(self.pkt.body(), 16)
    }

    pub fn octet_count(&self) -> u32 {
        rd_u32(self.pkt.body(), 20)
    }

    pub fn report_count(&self) -> u8 {
        self.pkt.count()
    }

    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks::new(self.pkt.body(), SR_FIXED_LEN, self.pkt.count())
    }

    pub fn report_block(&self, i: usize) -> Option<ReportBlock<'a>> {
        self.report_blocks().nth(i)
    }

    /// Profile-specific extension bytes after the report blocks.
    pub fn profile_extension(&self) -> &'a [u8] {
        let body = self.pkt.body();
        let start = SR_FIXED_LEN + usize::from(self.pkt.count()) * REPORT_BLOCK_LEN;
        sub(body, start, body.len())
    }
}

/// Receiver report (PT 201, RFC 3550 §6.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pkt: RtcpPacket<'a>,
}

impl<'a> ReceiverReport<'a> {
    pub fn packet(&self) -> RtcpPacket<'a> {
        self.pkt
    }

    pub fn ssrc(&self) -> u32 {
        rd_u32(self.pkt.body(), 0)
    }

    pub fn report_count(&self) -> u8 {
        self.pkt.count()
    }

    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks::new(self.pkt.body(), 4, self.pkt.count())
    }

    pub fn report_block(&self, i: usize) -> Option<ReportBlock<'a>> {
        self.report_blocks().nth(i)
    }

    /// Profile-specific extension bytes after the report blocks.
    pub fn profile_extension(&self) -> &'a [u8] {
        let body = self.pkt.body();
        let start = 4 + usize::from(self.pkt.count()) * REPORT_BLOCK_LEN;
        sub(body, start, body.len())
    }
}

/// Source description (PT 202, RFC 3550 §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sdes<'a> {
    pkt: RtcpPacket<'a>,
}

impl<'a> Sdes<'a> {
    pub fn packet(&self) -> RtcpPacket<'a> {
        self.pkt
    }

    pub fn chunk_count(&self) -> u8 {
        self.pkt.count()
    }

    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            body: self.pkt.body(),
            pos: 0,
            remaining: self.pkt.count(),
        }
    }
}

/// Iterator over the chunks of an SDES packet.
#[derive(Debug, Clone)]
pub struct SdesChunks<'a> {
    body: &'a [u8],
    pos: usize,
    remaining: u8,
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match sdes_chunk_bounds(self.body, self.pos) {
            Ok((items_end, next)) => {
                let chunk = SdesChunk {
                    ssrc: rd_u32(self.body, self.pos),
                    items: sub(self.body, self.pos + 4, items_end),
                };
                self.pos = next;
                Some(chunk)
            }
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }
}

impl FusedIterator for SdesChunks<'_> {}

/// One SDES chunk: an SSRC/CSRC and its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    ssrc: u32,
    /// Item list without the terminating null octet.
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn items(&self) -> SdesItems<'a> {
        SdesItems {
            buf: self.items,
            pos: 0,
        }
    }

    /// The value of the first item of type `kind` (e.g. [`SDES_CNAME`]).
    pub fn item(&self, kind: u8) -> Option<&'a [u8]> {
        self.items().find(|i| i.kind == kind).map(|i| i.value)
    }
}

/// One SDES item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesItem<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// Iterator over the items of an SDES chunk.
#[derive(Debug, Clone)]
pub struct SdesItems<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = SdesItem<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        let kind = *self.buf.get(self.pos)?;
        let len = usize::from(*self.buf.get(self.pos + 1)?);
        let start = self.pos + 2;
        let value = self.buf.get(start..start + len)?;
        self.pos = start + len;
        Some(SdesItem { kind, value })
    }
}

impl FusedIterator for SdesItems<'_> {}

/// Goodbye (PT 203, RFC 3550 §6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    pkt: RtcpPacket<'a>,
}

impl<'a> Bye<'a> {
    pub fn packet(&self) -> RtcpPacket<'a> {
        self.pkt
    }

    pub fn ssrc_count(&self) -> u8 {
        self.pkt.count()
    }

    pub fn ssrc(&self, i: usize) -> Option<u32> {
        if i >= usize::from(self.pkt.count()) {
            return None;
        }
        crate::wire::get_array::<4>(self.pkt.body(), i * 4).map(u32::from_be_bytes)
    }

    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let this = *self;
        (0..usize::from(self.pkt.count())).filter_map(move |i| this.ssrc(i))
    }

    /// The raw reason text, if present.
    pub fn reason(&self) -> Option<&'a [u8]> {
        let body = self.pkt.body();
        let at = usize::from(self.pkt.count()) * 4;
        let len = usize::from(*body.get(at)?);
        body.get(at + 1..at + 1 + len)
    }

    /// The reason text, if present and valid UTF-8.
    pub fn reason_str(&self) -> Option<&'a str> {
        self.reason().and_then(|r| core::str::from_utf8(r).ok())
    }
}

/// Application-defined packet (PT 204, RFC 3550 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct App<'a> {
    pkt: RtcpPacket<'a>,
}

impl<'a> App<'a> {
    pub fn packet(&self) -> RtcpPacket<'a> {
        self.pkt
    }

    pub fn subtype(&self) -> u8 {
        self.pkt.count()
    }

    pub fn ssrc(&self) -> u32 {
        rd_u32(self.pkt.body(), 0)
    }

    pub fn name(&self) -> [u8; 4] {
        rd_array::<4>(self.pkt.body(), 4)
    }

    pub fn data(&self) -> &'a [u8] {
        let body = self.pkt.body();
        sub(body, 8, body.len())
    }
}

/// RTPFB / PSFB feedback message (RFC 4585 §6.1), seen generically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback<'a> {
    pkt: RtcpPacket<'a>,
}

impl<'a> Feedback<'a> {
    pub fn packet(&self) -> RtcpPacket<'a> {
        self.pkt
    }

    /// Feedback message type (FMT).
    pub fn fmt(&self) -> u8 {
        self.pkt.count()
    }

    pub fn sender_ssrc(&self) -> u32 {
        rd_u32(self.pkt.body(), 0)
    }

    pub fn media_ssrc(&self) -> u32 {
        rd_u32(self.pkt.body(), 4)
    }

    /// Feedback control information.
    pub fn fci(&self) -> &'a [u8] {
        let body = self.pkt.body();
        sub(body, 8, body.len())
    }
}

/// Iterator over the packets of a compound RTCP packet.
///
/// Yields `Ok` for each valid packet, then stops. On the first malformed
/// packet (including 1–3 trailing bytes) it yields one `Err` and then
/// `None` forever. Each step advances by at least 4 bytes, so it always
/// terminates.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Entry point for walking a compound packet: `RtcpCompound::new(buf)`.
pub type RtcpCompound<'a> = RtcpIter<'a>;

impl<'a> RtcpIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        RtcpIter {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Offset of the next packet to be parsed.
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<'a>, WireError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match RtcpPacket::new_checked(sub(self.buf, self.pos, self.buf.len())) {
            Ok(pkt) => {
                self.pos += pkt.len_bytes();
                Some(Ok(pkt))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for RtcpIter<'_> {}

/// Apply the RFC 3550 §A.2 header validity checks to a compound packet and
/// return the number of packets in it.
///
/// Checks: every packet is valid (see [`RtcpPacket::new_checked`]); the
/// first is an SR or RR (else `UnsupportedProtocol`); only the last packet
/// may have the P bit set (else `BadPadding`); the lengths add up exactly
/// to the buffer (else `Truncated`); the buffer is not empty (`Truncated`).
/// Reduced-size RTCP (RFC 5506) does not pass this check by design.
pub fn validate_compound(buf: &[u8]) -> Result<usize, WireError> {
    if buf.is_empty() {
        return Err(WireError::Truncated);
    }
    let mut count = 0usize;
    let mut iter = RtcpIter::new(buf);
    while let Some(pkt) = iter.next() {
        let pkt = pkt?;
        if count == 0 && !matches!(pkt.packet_type(), PT_SR | PT_RR) {
            return Err(WireError::UnsupportedProtocol);
        }
        if pkt.padding() && iter.offset() != buf.len() {
            return Err(WireError::BadPadding);
        }
        count += 1;
    }
    Ok(count)
}

/// The sender SSRC of the first packet (see [`RtcpPacket::sender_ssrc`]),
/// if that packet is valid.
pub fn sender_ssrc(buf: &[u8]) -> Option<u32> {
    RtcpPacket::new_checked(buf).ok()?.sender_ssrc()
}

fn swap_ssrc(buf: &mut [u8], off: usize, from: u32, to: u32) -> usize {
    if crate::wire::get_array::<4>(buf, off).map(u32::from_be_bytes) == Some(from) {
        wr_u32(buf, off, to);
        1
    } else {
        0
    }
}

/// Rewrite every SR/RR sender SSRC, SDES chunk SSRC and BYE SSRC equal to
/// `from` into `to`, returning how many fields were rewritten.
///
/// Report blocks, APP, feedback and XR packets are left alone. Walking stops
/// at the first malformed packet; rewrites already done are kept.
pub fn rewrite_sender_ssrc(buf: &mut [u8], from: u32, to: u32) -> usize {
    let mut pos = 0usize;
    let mut rewritten = 0usize;
    while pos < buf.len() {
        let (len, pt, count, body_len) = match RtcpPacket::new_checked(sub(buf, pos, buf.len())) {
            Ok(p) => (p.len_bytes(), p.packet_type(), p.count(), p.body().len()),
            Err(_) => break,
        };
        let body_start = pos + HEADER_LEN;
        match pt {
            PT_SR | PT_RR => rewritten += swap_ssrc(buf, body_start, from, to),
            PT_BYE => {
                for i in 0..usize::from(count) {
                    rewritten += swap_ssrc(buf, body_start + i * 4, from, to);
                }
            }
            PT_SDES => {
                let mut chunk = 0usize;
                for _ in 0..count {
                    rewritten += swap_ssrc(buf, body_start + chunk, from, to);
                    let body = sub(buf, body_start, body_start + body_len);
                    match sdes_chunk_bounds(body, chunk) {
                        Ok((_, next)) => chunk = next,
                        Err(_) => break,
                    }
                }
            }
            _ => {}
        }
        pos += len;
    }
    rewritten
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SR (ssrc 0x11111111, one report block) + SDES (CNAME "ab") + BYE
    /// (ssrc 0x11111111, reason "bye").
    fn compound() -> Vec<u8> {
        let mut v = vec![
            // SR: V=2 RC=1, PT 200, length 12 (52 bytes)
            0x81, 200, 0x00, 0x0c, //
            0x11, 0x11, 0x11, 0x11, // sender ssrc
            0xe8, 0x00, 0x00, 0x01, 0x80, 0x00, 0x00, 0x00, // ntp
            0x00, 0x00, 0x1f, 0x40, // rtp ts 8000
            0x00, 0x00, 0x00, 0x32, // packet count 50
            0x00, 0x00, 0x1f, 0x40, // octet count 8000
            // report block
            0x22, 0x22, 0x22, 0x22, // ssrc
            0x40, 0xff, 0xff, 0xfe, // fraction 64, cumulative -2
            0x00, 0x01, 0x00, 0x10, // highest seq
            0x00, 0x00, 0x00, 0x05, // jitter
            0x00, 0x01, 0x80, 0x00, // lsr
            0x00, 0x00, 0x80, 0x00, // dlsr
        ];
        v.extend_from_slice(&[
            // SDES: SC=1, length 3 (16 bytes)
            0x81, 202, 0x00, 0x03, //
            0x11, 0x11, 0x11, 0x11, // chunk ssrc
            0x01, 0x02, b'a', b'b', // CNAME "ab"
            0x00, 0x00, 0x00, 0x00, // end + pad
        ]);
        v.extend_from_slice(&[
            // BYE: SC=1, length 2 (12 bytes)
            0x81, 203, 0x00, 0x02, //
            0x11, 0x11, 0x11, 0x11, //
            0x03, b'b', b'y', b'e',
        ]);
        v
    }

    #[test]
    fn parse_compound() {
        let buf = compound();
        assert_eq!(validate_compound(&buf), Ok(3));
        assert_eq!(sender_ssrc(&buf), Some(0x1111_1111));
        let pkts: Vec<_> = RtcpCompound::new(&buf).map(|p| p.unwrap()).collect();
        assert_eq!(pkts.len(), 3);

        let sr = pkts[0].sender_report().unwrap();
        assert_eq!(pkts[0].len_bytes(), 52);
        assert_eq!(pkts[0].version(), 2);
        assert!(!pkts[0].padding());
        assert_eq!(sr.ssrc(), 0x1111_1111);
        assert_eq!(sr.ntp_timestamp(), 0xe800_0001_8000_0000);
        assert_eq!(sr.rtp_timestamp(), 8000);
        assert_eq!(sr.packet_count(), 50);
        assert_eq!(sr.octet_count(), 8000);
        assert_eq!(sr.report_count(), 1);
        assert!(sr.profile_extension().is_empty());
        let rb = sr.report_block(0).unwrap();
        assert_eq!(rb.ssrc(), 0x2222_2222);
        assert_eq!(rb.fraction_lost(), 64);
        assert_eq!(rb.cumulative_lost(), -2);
        assert_eq!(rb.highest_seq(), 0x0001_0010);
        assert_eq!(rb.jitter(), 5);
        assert_eq!(rb.lsr(), 0x0001_8000);
        assert_eq!(rb.dlsr(), 0x8000);
        assert!(sr.report_block(1).is_none());
        assert_eq!(sr.report_blocks().len(), 1);

        let sdes = pkts[1].sdes().unwrap();
        let chunks: Vec<_> = sdes.chunks().collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ssrc(), 0x1111_1111);
        let items: Vec<_> = chunks[0].items().collect();
        assert_eq!(
            items,
            vec![SdesItem {
                kind: SDES_CNAME,
                value: b"ab"
            }]
        );
        assert_eq!(chunks[0].item(SDES_CNAME), Some(&b"ab"[..]));
        assert_eq!(chunks[0].item(SDES_TOOL), None);

        let bye = pkts[2].bye().unwrap();
        assert_eq!(bye.ssrc_count(), 1);
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![0x1111_1111]);
        assert_eq!(bye.reason(), Some(&b"bye"[..]));
        assert_eq!(bye.reason_str(), Some("bye"));
        assert!(matches!(pkts[2].view(), RtcpView::Bye(_)));
        assert!(pkts[2].sender_report().is_none());
    }

    #[test]
    fn rr_app_feedback_and_padding() {
        let buf = [
            // RR, RC=0, length 1
            0x80, 201, 0x00, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, //
            // APP subtype 3, length 3, name "VOXE", data 4 bytes
            0x83, 204, 0x00, 0x03, 0xaa, 0xbb, 0xcc, 0xdd, b'V', b'O', b'X', b'E', 1, 2, 3, 4,
            // PSFB PLI (FMT 1), length 2
            0x81, 206, 0x00, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x12, 0x34, 0x56, 0x78,
            // padded RR (last packet): length 2, 4 bytes padding
            0xa0, 201, 0x00, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x00, 0x00, 0x00, 0x04,
        ];
        assert_eq!(validate_compound(&buf), Ok(4));
        let pkts: Vec<_> = RtcpCompound::new(&buf).map(|p| p.unwrap()).collect();
        let rr = pkts[0].receiver_report().unwrap();
        assert_eq!(rr.ssrc(), 0xaabb_ccdd);
        assert_eq!(rr.report_blocks().count(), 0);
        let app = pkts[1].app().unwrap();
        assert_eq!(app.subtype(), 3);
        assert_eq!(app.ssrc(), 0xaabb_ccdd);
        assert_eq!(&app.name(), b"VOXE");
        assert_eq!(app.data(), &[1, 2, 3, 4]);
        let fb = pkts[2].feedback().unwrap();
        assert_eq!(fb.fmt(), 1);
        assert_eq!(fb.sender_ssrc(), 0xaabb_ccdd);
        assert_eq!(fb.media_ssrc(), 0x1234_5678);
        assert!(fb.fci().is_empty());
        assert_eq!(pkts[2].sender_ssrc(), Some(0xaabb_ccdd));
        assert!(pkts[3].padding());
        assert_eq!(pkts[3].padding_len(), 4);
        assert_eq!(pkts[3].body(), &[0xaa, 0xbb, 0xcc, 0xdd]);

        // Padding on a non-last packet breaks A.2 but not iteration.
        // (The APP packet's last data byte, 4, doubles as a pad count.)
        let mut moved = buf.to_vec();
        moved[8] |= 0x20;
        assert_eq!(validate_compound(&moved), Err(WireError::BadPadding));
        assert!(RtcpCompound::new(&moved).all(|p| p.is_ok()));
        // First packet must be SR or RR.
        assert_eq!(
            validate_compound(&buf[8..]),
            Err(WireError::UnsupportedProtocol)
        );
    }

    #[test]
    fn invalid_fields() {
        let good = compound();
        let first = |b: &[u8]| RtcpPacket::new_checked(b).map(|p| p.len_bytes());
        // Bad version.
        let mut b = good.clone();
        b[0] = 0x41;
        assert_eq!(first(&b), Err(WireError::BadVersion));
        assert_eq!(validate_compound(&b), Err(WireError::BadVersion));
        // Length overrunning the buffer.
        let mut b = good.clone();
        b[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(first(&b), Err(WireError::Truncated));
        // Report count inconsistent with length.
        let mut b = good.clone();
        b[0] = 0x82;
        assert_eq!(first(&b), Err(WireError::BadLength));
        // Padding count 0 / too big.
        let mut b = good[..52].to_vec();
        b[0] |= 0x20;
        b[51] = 0;
        assert_eq!(first(&b), Err(WireError::BadPadding));
        b[51] = 49;
        assert_eq!(first(&b), Err(WireError::BadPadding));
        // BYE count overrunning / reason overrunning.
        let mut b = good[68..].to_vec();
        b[0] = 0x83;
        assert_eq!(first(&b), Err(WireError::BadLength));
        let mut b = good[68..].to_vec();
        b[8] = 4;
        assert_eq!(first(&b), Err(WireError::BadLength));
        // SDES chunk without terminator.
        let mut b = good[52..68].to_vec();
        b[9] = 6;
        assert_eq!(first(&b), Err(WireError::BadLength));
        // SDES count larger than the chunks present.
        let mut b = good[52..68].to_vec();
        b[0] = 0x82;
        assert_eq!(first(&b), Err(WireError::BadLength));
        // Trailing garbage shorter than a header.
        let mut b = good.clone();
        b.extend_from_slice(&[0x81, 0]);
        assert_eq!(validate_compound(&b), Err(WireError::Truncated));
        assert_eq!(validate_compound(&[]), Err(WireError::Truncated));
    }

    #[test]
    fn every_truncation() {
        let buf = compound();
        for n in 0..buf.len() {
            let prefix = &buf[..n];
            let r = validate_compound(prefix);
            match n {
                52 => assert_eq!(r, Ok(1)),
                68 => assert_eq!(r, Ok(2)),
                _ => assert!(r.is_err(), "n = {n}"),
            }
            let mut oks = 0;
            let mut errs = 0;
            for p in RtcpCompound::new(prefix) {
                match p {
                    Ok(p) => {
                        oks += 1;
                        let _ = (p.view(), p.sender_ssrc(), p.body());
                    }
                    Err(_) => errs += 1,
                }
            }
            assert!(errs <= 1);
            assert_eq!(
                oks + errs,
                usize::from(n > 0) + usize::from(n > 52) + usize::from(n > 68)
            );
            let mut copy = prefix.to_vec();
            let rewritten = rewrite_sender_ssrc(&mut copy, 0x1111_1111, 7);
            assert!(rewritten <= 3);
        }
    }

    #[test]
    fn rewrite() {
        let mut buf = compound();
        assert_eq!(rewrite_sender_ssrc(&mut buf, 0x1111_1111, 0xcafe_babe), 3);
        assert_eq!(sender_ssrc(&buf), Some(0xcafe_babe));
        let pkts: Vec<_> = RtcpCompound::new(&buf).map(|p| p.unwrap()).collect();
        // The report block (about another source) is untouched.
        let sr = pkts[0].sender_report().unwrap();
        assert_eq!(sr.report_block(0).unwrap().ssrc(), 0x2222_2222);
        assert_eq!(
            pkts[1].sdes().unwrap().chunks().next().unwrap().ssrc(),
            0xcafe_babe
        );
        assert_eq!(pkts[2].bye().unwrap().ssrc(0), Some(0xcafe_babe));
        assert_eq!(rewrite_sender_ssrc(&mut buf, 0x1111_1111, 1), 0);
        // Stops at the first malformed packet.
        let mut buf = compound();
        buf[52] = 0x41;
        assert_eq!(rewrite_sender_ssrc(&mut buf, 0x1111_1111, 9), 1);
        assert_eq!(&buf[4..8], &9u32.to_be_bytes());
        assert_eq!(&buf[56..60], &[0x11; 4]);
        assert_eq!(&buf[72..76], &[0x11; 4]);
    }

    #[test]
    fn cumulative_lost_sign() {
        let mut b = [0u8; 24];
        b[5..8].copy_from_slice(&[0x7f, 0xff, 0xff]);
        assert_eq!(
            ReportBlock::new_checked(&b).unwrap().cumulative_lost(),
            0x7f_ffff
        );
        b[5..8].copy_from_slice(&[0x80, 0x00, 0x00]);
        assert_eq!(
            ReportBlock::new_checked(&b).unwrap().cumulative_lost(),
            -0x80_0000
        );
        assert_eq!(
            ReportBlock::new_checked(&b[..23]),
            Err(WireError::Truncated)
        );
    }
}
