//! Programmable voice: instruction documents (TwiML), fetching them from the customer's app
//! with fallback, the audio they play, and the engine that runs them on a call.

pub mod audio;
pub mod conference;
pub mod engine;
pub mod fetch;
pub mod record;
pub mod twiml;
