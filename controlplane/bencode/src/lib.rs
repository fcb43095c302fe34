//! Bencode, as rtpengine's ng protocol uses it: integers, byte strings, lists and dictionaries.
//!
//! The decoder is bounded (nesting depth, element count) and never panics: a malformed,
//! truncated or hostile message is an error naming the offset. Dictionaries keep their order
//! (replies are written in the order built; lookups are linear — ng dictionaries are small).

use std::fmt;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(Vec<(Vec<u8>, Value)>),
}

/// Why bytes are not one bencoded value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("truncated bencode")]
    Truncated,
    #[error("malformed bencode at byte {0}")]
    Malformed(usize),
    #[error("bencode nested deeper than {0}")]
    TooDeep(usize),
    #[error("bencode with more than {0} elements")]
    TooMany(usize),
}

/// Limits of the decoder.
pub const MAX_DEPTH: usize = 16;
pub const MAX_ELEMENTS: usize = 10_000;

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from (key, value) pairs.
    pub fn dict<const N: usize>(pairs: [(&str, Value); N]) -> Value {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The value of `key` in a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d
                .iter()
                .find(|(k, _)| k.as_slice() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Adds or replaces `key` in a dictionary (no effect on other kinds).
    pub fn set(&mut self, key: &str, v: Value) {
        if let Value::Dict(d) = self {
            match d.iter_mut().find(|(k, _)| k.as_slice() == key.as_bytes()) {
                Some(slot) => slot.1 = v,
                None => d.push((key.as_bytes().to_vec(), v)),
            }
        }
    }

    /// The bytes of a string, as UTF-8 text (lossy).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The raw bytes of a string (binary blobs).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// Strings of a list (a lone string counts as a list of one, as rtpengine accepts).
    pub fn as_texts(&self) -> Vec<String> {
        match self {
            Value::List(l) => l.iter().filter_map(Value::as_text).collect(),
            Value::Bytes(_) => self.as_text().into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Appends the encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// As JSON (byte strings as text), for JSON-speaking clients.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Bytes(b) => serde_json::Value::from(String::from_utf8_lossy(b).into_owned()),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Dict(d) => serde_json::Value::Object(
                d.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// From JSON (numbers that are not integers become text, booleans "yes"/"no", null empty).
    pub fn from_json(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Bytes(Vec::new()),
            serde_json::Value::Bool(b) => Value::str(if *b { "yes" } else { "no" }),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::str(&n.to_string()),
            },
            serde_json::Value::String(s) => Value::str(s),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Dict(
                o.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    elements: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, Error> {
        self.buf.get(self.pos).copied().ok_or(Error::Truncated)
    }

    /// Digits up to `end`, as an integer (`-` allowed when `signed`).
    fn number(&mut self, end: u8, signed: bool) -> Result<i64, Error> {
        let start = self.pos;
        let stop = self.buf[start..]
            .iter()
            .position(|b| *b == end)
            .map(|p| start + p)
            .ok_or(Error::Truncated)?;
        let text =
            std::str::from_utf8(&self.buf[start..stop]).map_err(|_| Error::Malformed(start))?;
        let digits = text.strip_prefix('-').filter(|_| signed).unwrap_or(text);
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
            || text == "-0"
        {
            return Err(Error::Malformed(start));
        }
        let n = text.parse::<i64>().map_err(|_| Error::Malformed(start))?;
        self.pos = stop + 1;
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let at = self.pos;
        let len = usize::try_from(self.number(b':', false)?).map_err(|_| Error::Malformed(at))?;
        let end = self.pos.checked_add(len).ok_or(Error::Malformed(at))?;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(Error::Truncated)?
            .to_vec();
        self.pos = end;
        Ok(b)
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep(MAX_DEPTH));
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(Error::TooMany(MAX_ELEMENTS));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                Ok(Value::Int(self.number(b'e', true)?))
            }
            b'l' => {
                self.pos += 1;
                let mut l = Vec::new();
                while self.peek()? != b'e' {
                    l.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(l))
            }
            b'd' => {
                self.pos += 1;
                let mut d = Vec::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(Error::Malformed(self.pos));
                    }
                    let k = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    d.push((k, v));
                }
                self.pos += 1;
                Ok(Value::Dict(d))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            _ => Err(Error::Malformed(self.pos)),
        }
    }
}

/// Decodes one value at the start of `buf`; returns it and the bytes it took.
///
/// # Errors
/// Truncated input (more bytes may complete it), malformed input, or input beyond the limits.
pub fn decode_prefix(buf: &[u8]) -> Result<(Value, usize), Error> {
    let mut d = Decoder {
        buf,
        pos: 0,
        elements: 0,
    };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

/// Decodes exactly one value filling `buf`.
///
/// # Errors
/// As [`decode_prefix`], and trailing bytes.
pub fn decode(buf: &[u8]) -> Result<Value, Error> {
    let (v, n) = decode_prefix(buf)?;
    if n != buf.len() {
        return Err(Error::Malformed(n));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = Value::dict([
            ("command", Value::str("offer")),
            ("flags", Value::List(vec![Value::str("trust-address")])),
            ("n", Value::Int(-42)),
            ("empty", Value::Dict(vec![])),
        ]);
        let e = v.encode();
        assert_eq!(
            e,
            b"d7:command5:offer5:flagsl13:trust-addresse1:ni-42e5:emptydee".to_vec()
        );
        assert_eq!(decode(&e).expect("decodes"), v);
        assert_eq!(
            v.get("command").and_then(Value::as_text).as_deref(),
            Some("offer")
        );
    }

    #[test]
    fn rejects_malformed_and_truncated() {
        for bad in [
            &b""[..],
            b"i12",
            b"ie",
            b"i-0e",
            b"i01e",
            b"5:abc",
            b"d3:keye",
            b"di1ei2ee",
            b"l",
            b"x",
            b"99999999999999999999999:a",
            b"18446744073709551615:a",
            b"4:abcde",
            b"i9223372036854775808e",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(decode_prefix(b"3:abcXYZ").expect("prefix").1, 5);
    }

    #[test]
    fn bounded_depth_and_size() {
        let deep = format!("{}{}", "l".repeat(100), "e".repeat(100));
        assert_eq!(decode(deep.as_bytes()), Err(Error::TooDeep(MAX_DEPTH)));
        let many = format!("l{}e", "i1e".repeat(MAX_ELEMENTS + 1));
        assert_eq!(decode(many.as_bytes()), Err(Error::TooMany(MAX_ELEMENTS)));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::SmallRng::seed_from_u64(7);
        let seed = Value::dict([
            ("command", Value::str("offer")),
            ("sdp", Value::str("v=0\r\n")),
            ("flags", Value::List(vec![Value::str("a"), Value::Int(3)])),
        ])
        .encode();
        for _ in 0..20_000 {
            let mut m = seed.clone();
            for _ in 0..r.gen_range(1..4) {
                let i = r.gen_range(0..m.len());
                match r.gen_range(0..3) {
                    0 => m[i] = r.gen(),
                    1 => m.truncate(i),
                    _ => m.insert(i, r.gen()),
                }
                if m.is_empty() {
                    break;
                }
            }
            let _ = decode(&m);
        }
    }
}
