//! Built without the `opus` feature: an Opus member cannot be created (joining one is refused
//! with [`OpusError`]), so these types have no values and their methods cannot be reached.

use super::jitter::{FrameKind, JitterStats, PushError, Target};

/// Why an Opus codec could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusError(pub String);

fn not_built() -> OpusError {
    OpusError("Opus is not built in (build with the `opus` feature and libopus-dev)".into())
}

pub enum OpusIn {}

impl OpusIn {
    pub fn new(_rate: u32, _policy: Target) -> Result<Self, OpusError> {
        Err(not_built())
    }

    pub fn target_ms(&self) -> u32 {
        match *self {}
    }

    pub fn push(&mut self, _: u32, _: u32, _: &[u8], _: u32) -> Result<(), PushError> {
        match *self {}
    }

    pub fn read(&mut self, _out: &mut [i16]) -> FrameKind {
        match *self {}
    }

    pub fn stats(&self) -> JitterStats {
        match *self {}
    }
}

pub enum OpusOut {}

impl OpusOut {
    pub fn new(_rate: u32) -> Result<Self, OpusError> {
        Err(not_built())
    }

    pub fn encode(&mut self, _pcm: &[i16], _out: &mut [u8]) -> Option<usize> {
        match *self {}
    }
}
