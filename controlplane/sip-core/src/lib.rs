//! The SIP core of VoxEdge, sans-IO: bytes in, parsed messages out (and back), with no
//! sockets, clock or async runtime inside, so the compiler keeps it that way (this crate does
//! not depend on tokio).
//!
//! Parsing is done by ezk's `ezk-sip-types` (see ADR 0005 for the choice and the evidence),
//! adapted here: the start line is parsed by us so that `tel:` request URIs (RFC 3966) work;
//! framing by Content-Length for stream transports, size and count limits, multipart bodies.

pub mod dialog;
pub mod message;
pub mod transaction;
pub mod uri;

pub use message::{Framer, Limits, ParseError, SipMessage, StartLine};
pub use uri::{AnyUri, TelUri};
