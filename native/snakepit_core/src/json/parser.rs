//! A JSON parser that keeps its own stack of open containers: however deep
//! the input, the native stack does not grow. It refuses a container past
//! the depth limit as it meets it, so nothing deeper is ever built.
//!
//! It reads what `serde_json::from_slice` reads, into the same `Value`s:
//! integers stay `i64`/`u64` (beyond 64 bits they become floats, as there),
//! object keys that repeat keep the last value, strings must be valid UTF-8
//! with no lone surrogate escapes, and nothing but whitespace may follow the
//! document.

use serde_json::{Map, Number, Value};

use super::error::{too_deep, Error};
use super::path::{format_path, index_segment, key_segment};

/// An open container and what it holds so far.
enum Frame {
    Array(Vec<Value>),
    /// The object and the key whose value is being read.
    Object(Map<String, Value>, String),
}

impl Frame {
    /// The path segment of the value being read inside this container.
    fn segment(&self) -> String {
        match self {
            Frame::Array(items) => index_segment(items.len()),
            Frame::Object(_, key) => key_segment(key),
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Parses `bytes` (not empty); containers may nest `max_depth` deep. The
/// error message of a deeper one names `max_nesting_depth` as `limit`.
/// Returns the value and how deep it is.
pub(super) fn parse(bytes: &[u8], max_depth: usize, limit: usize) -> Result<(Value, usize), Error> {
    let mut p = Parser { bytes, at: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    let mut deepest = 0;
    loop {
        // A value starts here: a scalar, or a container to open.
        p.skip_ws();
        let mut value = match p.peek() {
            Some(open @ (b'[' | b'{')) => {
                if stack.len() >= max_depth {
                    let path: Vec<String> = stack.iter().map(Frame::segment).collect();
                    return Err(Error::Limit(too_deep(&format_path(&path), limit)));
                }
                p.at += 1;
                deepest = deepest.max(stack.len() + 1);
                p.skip_ws();
                if open == b'[' {
                    if p.peek() == Some(b']') {
                        p.at += 1;
                        Value::Array(Vec::new())
                    } else {
                        stack.push(Frame::Array(Vec::new()));
                        continue;
                    }
                } else if p.peek() == Some(b'}') {
                    p.at += 1;
                    Value::Object(Map::new())
                } else {
                    let key = p.key()?;
                    stack.push(Frame::Object(Map::new(), key));
                    continue;
                }
            }
            Some(b'"') => Value::String(p.string()?),
            Some(b't') => p.literal(b"true", Value::Bool(true))?,
            Some(b'f') => p.literal(b"false", Value::Bool(false))?,
            Some(b'n') => p.literal(b"null", Value::Null)?,
            Some(b'-' | b'0'..=b'9') => Value::Number(p.number()?),
            Some(_) => return Err(p.error("expected a value")),
            None => return Err(p.error("the document ends where a value should be")),
        };
        // A whole value: put it in its container, closing the containers
        // that end after it, until one expects another value.
        loop {
            let Some(top) = stack.last_mut() else {
                p.skip_ws();
                if p.at != bytes.len() {
                    return Err(p.error("unexpected characters after the document"));
                }
                return Ok((value, deepest));
            };
            p.skip_ws();
            let close = match top {
                Frame::Array(items) => {
                    items.push(value);
                    match p.next_byte() {
                        Some(b',') => false,
                        Some(b']') => true,
                        _ => return Err(p.error_before("expected `,` or `]`")),
                    }
                }
                Frame::Object(map, key) => {
                    map.insert(std::mem::take(key), value);
                    match p.next_byte() {
                        Some(b',') => {
                            p.skip_ws();
                            *key = p.key()?;
                            false
                        }
                        Some(b'}') => true,
                        _ => return Err(p.error_before("expected `,` or `}`")),
                    }
                }
            };
            if !close {
                break;
            }
            value = match stack.pop() {
                Some(Frame::Array(items)) => Value::Array(items),
                Some(Frame::Object(map, _)) => Value::Object(map),
                None => unreachable!("a frame was on the stack"),
            };
        }
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn error(&self, what: &str) -> Error {
        Error::Syntax(format!("{what} at byte {}", self.at))
    }

    /// An error about the byte just consumed.
    fn error_before(&self, what: &str) -> Error {
        Error::Syntax(format!("{what} at byte {}", self.at.saturating_sub(1)))
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Error> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a value"))
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<String, Error> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key"));
        }
        let key = self.string()?;
        self.skip_ws();
        if self.next_byte() != Some(b':') {
            return Err(self.error_before("expected `:`"));
        }
        Ok(key)
    }

    /// A string, from its opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.at += 1;
        let start = self.at;
        // The quote or escape that ends the plain run, then no control
        // character before it (both scans vectorize).
        let run =
            memchr::memchr2(b'"', b'\\', &self.bytes[start..]).unwrap_or(self.bytes.len() - start);
        self.at = match self.bytes[start..start + run]
            .iter()
            .position(|&b| b < 0x20)
        {
            Some(control) => start + control,
            None => start + run,
        };
        if self.peek() == Some(b'"') {
            let text = std::str::from_utf8(&self.bytes[start..self.at])
                .map_err(|_| self.error("invalid UTF-8 in a string"))?;
            self.at += 1;
            return Ok(text.to_owned());
        }
        // Escapes: rebuild the string byte by byte from here.
        let mut out = self.bytes[start..self.at].to_vec();
        loop {
            let Some(b) = self.next_byte() else {
                return Err(self.error("unterminated string"));
            };
            match b {
                b'"' => break,
                b'\\' => self.escape(&mut out)?,
                0..=0x1f => return Err(self.error_before("control character in a string")),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8 in a string"))
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let c = match self.next_byte() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let first = self.hex4()?;
                match first {
                    0xD800..=0xDBFF => {
                        if self.next_byte() != Some(b'\\') || self.next_byte() != Some(b'u') {
                            return Err(self.error("lone leading surrogate in a \\u escape"));
                        }
                        let second = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(self.error("lone leading surrogate in a \\u escape"));
                        }
                        let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))?
                    }
                    0xDC00..=0xDFFF => {
                        return Err(self.error("lone trailing surrogate in a \\u escape"))
                    }
                    code => char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))?,
                }
            }
            _ => return Err(self.error_before("invalid escape")),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error("a \\u escape is cut short"))?;
        let mut code = 0u32;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            code = code * 16 + v;
        }
        self.at += 4;
        Ok(code)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    /// A number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<Number, Error> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).expect("ASCII digits");
        if integer {
            if negative {
                if let Ok(n) = text.parse::<i64>() {
                    return Ok(Number::from(n));
                }
            } else if let Ok(n) = text.parse::<u64>() {
                return Ok(Number::from(n));
            }
        }
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .ok_or_else(|| Error::Syntax(format!("number out of range at byte {start}")))
    }
}
