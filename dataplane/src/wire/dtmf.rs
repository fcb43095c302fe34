//! RTP payload for named telephone events (RFC 4733 §2.3), i.e. DTMF
//! digits carried as "telephone-event" packets.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::{rd_u16, rd_u8, wr_u16, wr_u8, WireError};

/// Length of one event block.
pub const PAYLOAD_LEN: usize = 4;

mod field {
    pub const EVENT: usize = 0;
    pub const E_R_VOLUME: usize = 1;
    pub const DURATION: usize = 2;
}

const FLAG_E: u8 = 0x80;
const FLAG_R: u8 = 0x40;
const VOLUME_MASK: u8 = 0x3f;

/// A read/write view of a telephone-event payload (the first event block).
#[derive(Debug, Clone)]
pub struct TelephoneEvent<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TelephoneEvent<T> {
    /// Wrap a buffer without validating it. Accessors never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        TelephoneEvent { buffer }
    }

    /// Wrap a buffer of at least 4 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < PAYLOAD_LEN {
            return Err(WireError::Truncated);
        }
        Ok(TelephoneEvent { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Event code (0–9, 10 = '*', 11 = '#', 12–15 = A–D, 16 = flash, …).
    pub fn event(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::EVENT)
    }

    /// The E bit: this packet ends the event.
    pub fn end(&self) -> bool {
        rd_u8(self.buffer.as_ref(), field::E_R_VOLUME) & FLAG_E != 0
    }

    /// The reserved R bit.
    pub fn reserved(&self) -> bool {
        rd_u8(self.buffer.as_ref(), field::E_R_VOLUME) & FLAG_R != 0
    }

    /// Power level in -dBm0 (6 bits, 0..=63).
    pub fn volume(&self) -> u8 {
        rd_u8(self.buffer.as_ref(), field::E_R_VOLUME) & VOLUME_MASK
    }

    /// Duration so far, in RTP timestamp units.
    pub fn duration(&self) -> u16 {
        rd_u16(self.buffer.as_ref(), field::DURATION)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TelephoneEvent<T> {
    pub fn set_event(&mut self, event: u8) {
        wr_u8(self.buffer.as_mut(), field::EVENT, event);
    }

    pub fn set_end(&mut self, end: bool) {
        let b = rd_u8(self.buffer.as_ref(), field::E_R_VOLUME);
        let b = if end { b | FLAG_E } else { b & !FLAG_E };
        wr_u8(self.buffer.as_mut(), field::E_R_VOLUME, b);
    }

    /// Set the volume (masked to 6 bits).
    pub fn set_volume(&mut self, volume: u8) {
        let b = rd_u8(self.buffer.as_ref(), field::E_R_VOLUME);
        let b = (b & !VOLUME_MASK) | (volume & VOLUME_MASK);
        wr_u8(self.buffer.as_mut(), field::E_R_VOLUME, b);
    }

    pub fn set_duration(&mut self, duration: u16) {
        wr_u16(self.buffer.as_mut(), field::DURATION, duration);
    }
}

/// The DTMF character for an event code: 0–9, `*`, `#`, `A`–`D`.
pub fn digit_char(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// Write a 4-byte event block (R bit clear, `volume` masked to 6 bits) and
/// return 4; `Truncated` if `buf` is shorter.
pub fn emit(
    buf: &mut [u8],
    event: u8,
    end: bool,
    volume: u8,
    duration: u16,
) -> Result<usize, WireError> {
    let block = buf.get_mut(..PAYLOAD_LEN).ok_or(WireError::Truncated)?;
    wr_u8(block, field::E_R_VOLUME, 0);
    let mut ev = TelephoneEvent::new_unchecked(block);
    ev.set_event(event);
    ev.set_end(end);
    ev.set_volume(volume);
    ev.set_duration(duration);
    Ok(PAYLOAD_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_known() {
        // '#' end packet, volume 10, duration 1280 (160 ms at 8 kHz).
        let buf = [0x0b, 0x8a, 0x05, 0x00];
        let ev = TelephoneEvent::new_checked(&buf[..]).unwrap();
        assert_eq!(ev.event(), 11);
        assert!(ev.end());
        assert!(!ev.reserved());
        assert_eq!(ev.volume(), 10);
        assert_eq!(ev.duration(), 1280);
        assert_eq!(digit_char(ev.event()), Some('#'));
    }

    #[test]
    fn digit_chars() {
        let all: String = (0..16).filter_map(digit_char).collect();
        assert_eq!(all, "0123456789*#ABCD");
        assert_eq!(digit_char(16), None);
        assert_eq!(digit_char(255), None);
    }

    #[test]
    fn every_truncation() {
        let buf = [5u8, 0x3f, 0, 160];
        for n in 0..buf.len() {
            assert_eq!(
                TelephoneEvent::new_checked(&buf[..n]).unwrap_err(),
                WireError::Truncated
            );
            let ev = TelephoneEvent::new_unchecked(&buf[..n]);
            let _ = (ev.event(), ev.end(), ev.volume(), ev.duration());
        }
        // Longer buffers (redundant blocks) are fine; the first block is read.
        let long = [5u8, 0x3f, 0, 160, 1, 2, 3, 4];
        assert_eq!(TelephoneEvent::new_checked(&long[..]).unwrap().event(), 5);
    }

    #[test]
    fn emit_and_set() {
        let mut buf = [0xffu8; 4];
        assert_eq!(emit(&mut buf, 1, false, 0xff, 320), Ok(4));
        let mut ev = TelephoneEvent::new_checked(&mut buf[..]).unwrap();
        assert_eq!(ev.event(), 1);
        assert!(!ev.end());
        assert!(!ev.reserved());
        assert_eq!(ev.volume(), 63);
        assert_eq!(ev.duration(), 320);
        ev.set_end(true);
        ev.set_volume(7);
        ev.set_duration(640);
        ev.set_event(15);
        assert_eq!(buf, [15, 0x87, 0x02, 0x80]);
        assert_eq!(
            emit(&mut [0u8; 3], 1, true, 1, 1),
            Err(WireError::Truncated)
        );
    }
}
