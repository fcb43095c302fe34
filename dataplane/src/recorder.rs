//! Recording taps: a leg's received RTP payloads copied, as they pass the pipeline, into a
//! bounded channel the control plane drains (it decodes, mixes and writes the file). The
//! worker never blocks, allocates or locks for it: a frame is built on the stack and offered
//! with `try_send` (crossbeam's array channel: atomics only while nobody waits on the
//! receiving side, and the control plane polls rather than waits); a full channel or an
//! oversized payload is a counted drop, never a stall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// The receiving end of a tap.
pub type RecReceiver = Receiver<RecFrame>;

/// Largest payload recorded (40 ms of G.711); larger ones are counted in `dropped`.
pub const REC_PAYLOAD_MAX: usize = 320;

/// One recorded RTP payload.
#[derive(Debug, Clone, Copy)]
pub struct RecFrame {
    pub seq: u16,
    pub ts: u32,
    pub payload_type: u8,
    pub len: u16,
    pub data: [u8; REC_PAYLOAD_MAX],
}

impl RecFrame {
    /// A frame holding `payload`; `None` when it is longer than [`REC_PAYLOAD_MAX`].
    #[inline]
    pub fn new(seq: u16, ts: u32, payload_type: u8, payload: &[u8]) -> Option<RecFrame> {
        let mut f = RecFrame {
            seq,
            ts,
            payload_type,
            len: u16::try_from(payload.len()).ok()?,
            data: [0; REC_PAYLOAD_MAX],
        };
        f.data.get_mut(..payload.len())?.copy_from_slice(payload);
        Some(f)
    }

    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(REC_PAYLOAD_MAX)]
    }
}

/// The worker's end of a recording (cloned into the stream).
#[derive(Debug, Clone)]
pub struct RecordTap {
    tx: Sender<RecFrame>,
    /// Payloads not recorded: the channel was full, or a payload over [`REC_PAYLOAD_MAX`].
    pub dropped: Arc<AtomicU64>,
}

impl RecordTap {
    /// A tap holding at most `capacity` frames until the control plane drains them, and its
    /// receiving end.
    pub fn new(capacity: usize) -> (RecordTap, Receiver<RecFrame>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        (
            RecordTap {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Offers one payload (packet path).
    #[inline]
    pub fn push(&self, seq: u16, ts: u32, payload_type: u8, payload: &[u8]) {
        let Some(f) = RecFrame::new(seq, ts, payload_type, payload) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.tx.try_send(f).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_channel_and_oversized_payloads_are_counted_drops() {
        let (tap, rx) = RecordTap::new(2);
        tap.push(1, 160, 0, &[1; 160]);
        tap.push(2, 320, 0, &[2; 160]);
        tap.push(3, 480, 0, &[3; 160]);
        tap.push(4, 640, 0, &[4; REC_PAYLOAD_MAX + 1]);
        assert_eq!(tap.dropped.load(Ordering::Relaxed), 2);
        let got: Vec<RecFrame> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].seq, got[0].ts, got[0].payload()),
            (1, 160, &[1u8; 160][..])
        );
        assert_eq!(got[1].payload()[0], 2);
        // Drained: room again.
        tap.push(5, 800, 8, &[5; 10]);
        assert_eq!(
            rx.try_recv().map(|f| (f.payload_type, f.len)).ok(),
            Some((8, 10))
        );
    }
}
