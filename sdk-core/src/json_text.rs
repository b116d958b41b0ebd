//! A small serde `Deserializer` over JSON text, for hub frames.
//!
//! The browser SDK decodes every frame the hub sends; with serde_json's
//! deserializer its wasm also carries serde_json's float parser and, through
//! serde's `Unexpected` messages, Rust's float formatting — about a sixth
//! of the bundle — although no frame field is a float. This reader accepts
//! exactly the JSON serde_json accepts (same grammar, string escapes,
//! surrogate pairs, nesting limit of 128 for values read into types, payloads
//! skipped as text without a limit) and drives the same serde visitors, so
//! the frame types in `frames` stay the only definition of a frame. What
//! differs is only what no frame needs:
//!
//! - a number with a fraction or exponent (or an integer beyond `u64`/`i64`)
//!   reaches a visitor as an approximate `f64` (from its first 19
//!   significant digits, not correctly rounded; a value within a few ulps of
//!   `f64::MAX` may be refused as out of range); frames refuse floats
//!   anyway, and payloads stay text ([`Payload`]);
//! - error messages name a float as "floating point number" without its value.

use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Expected, Unexpected, Visitor};
use serde::forward_to_deserialize_any;

use crate::frames::Payload;

mod write;

pub use write::to_string;

/// How deep arrays and objects may nest in a value read into a type (as in
/// serde_json): deeper input is an error, not a stack overflow.
const RECURSION_LIMIT: u8 = 128;

/// The name serde_json's `RawValue` asks a deserializer for; answered with
/// the value's text, unparsed (as serde_json's own deserializer does).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Why JSON text was refused: the message, and where (1-based line and
/// column of the byte where reading stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    message: String,
    line: usize,
    column: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(
                f,
                "{} at line {} column {}",
                self.message, self.line, self.column
            )
        }
    }
}

impl std::error::Error for JsonError {}

impl de::Error for JsonError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        JsonError {
            message: msg.to_string(),
            line: 0,
            column: 0,
        }
    }

    // Overridden so that serde's own `Unexpected` formatting (and with it
    // Rust's float formatting) is never linked.
    #[cold]
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::custom(format_args!(
            "invalid type: {}, expected {exp}",
            Described(unexp)
        ))
    }

    #[cold]
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::custom(format_args!(
            "invalid value: {}, expected {exp}",
            Described(unexp)
        ))
    }
}

/// `Unexpected` in serde_json's words, floats without their value.
struct Described<'a>(Unexpected<'a>);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(f, "integer `{n}`"),
            Unexpected::Signed(n) => write!(f, "integer `{n}`"),
            Unexpected::Float(_) => f.write_str("floating point number"),
            Unexpected::Char(c) => write!(f, "character `{c}`"),
            Unexpected::Str(s) => write!(f, "string {}", Quoted(s)),
            Unexpected::Bytes(_) => f.write_str("byte array"),
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Option => f.write_str("Option value"),
            Unexpected::NewtypeStruct => f.write_str("newtype struct"),
            Unexpected::Seq => f.write_str("sequence"),
            Unexpected::Map => f.write_str("map"),
            Unexpected::Enum => f.write_str("enum"),
            Unexpected::UnitVariant => f.write_str("unit variant"),
            Unexpected::NewtypeVariant => f.write_str("newtype variant"),
            Unexpected::TupleVariant => f.write_str("tuple variant"),
            Unexpected::StructVariant => f.write_str("struct variant"),
            Unexpected::Other(other) => f.write_str(other),
        }
    }
}

/// Text in double quotes, `"` `\\` and control characters escaped as in
/// JSON: for messages that quote input. Unlike `{:?}` it needs no Unicode
/// tables (which cost the browser SDK ~3 KiB of wasm).
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_string(f, self.0)
    }
}

/// `text` as a JSON string literal, escaped as serde_json escapes it.
///
/// Slices with `get` rather than indexing: the cuts are at ASCII bytes, so
/// always char boundaries, and indexing would link the panic path of
/// string slicing, which formats chars with `{:?}` and so brings Unicode
/// tables into the browser SDK's wasm.
pub(crate) fn write_string<W: fmt::Write + ?Sized>(out: &mut W, text: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.write_str("\"")?;
    let mut plain_from = 0;
    for (at, &byte) in text.as_bytes().iter().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\x08' => "\\b",
            b'\x0c' => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.write_str(text.get(plain_from..at).unwrap_or_default())?;
        if escaped.is_empty() {
            out.write_str("\\u00")?;
            out.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
            out.write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
        } else {
            out.write_str(escaped)?;
        }
        plain_from = at + 1;
    }
    out.write_str(text.get(plain_from..).unwrap_or_default())?;
    out.write_str("\"")
}

/// Reads `T` from the whole of `text` (whitespace around it allowed).
pub fn from_str<'de, T: de::Deserialize<'de>>(text: &'de str) -> Result<T, JsonError> {
    from_str_seed(text, std::marker::PhantomData)
}

/// Reads a value with `seed` from the whole of `text`.
pub fn from_str_seed<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, JsonError> {
    let mut reader = JsonText::new(text);
    let value = seed
        .deserialize(&mut reader)
        .and_then(|value| reader.end().map(|()| value));
    value.map_err(|error| reader.located(error))
}

/// `text` as a [`Payload`] once it is checked to be one JSON value (kept
/// verbatim, surrounding whitespace removed).
pub fn payload(text: &str) -> Result<Payload, JsonError> {
    from_str(text)
}

/// The reader: a position in the text, and how much deeper values may nest.
#[derive(Debug)]
pub struct JsonText<'de> {
    text: &'de str,
    pos: usize,
    depth_left: u8,
}

/// The start of a value.
enum Token<'de> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(Text<'de>),
    /// `[`, consumed.
    Array,
    /// `{`, consumed.
    Object,
}

/// A string as read: borrowed from the text when it has no escapes.
enum Text<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> JsonText<'de> {
    pub fn new(text: &'de str) -> Self {
        JsonText {
            text,
            pos: 0,
            depth_left: RECURSION_LIMIT,
        }
    }

    fn bytes(&self) -> &'de [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek_token(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
        self.peek()
    }

    fn error(&self, message: &str) -> JsonError {
        self.located(de::Error::custom(message))
    }

    /// `error` with the current position, unless it has one.
    fn located(&self, mut error: JsonError) -> JsonError {
        if error.line == 0 {
            let before = &self.bytes()[..self.pos.min(self.text.len())];
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            error.line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            error.column = before.len() - line_start;
        }
        error
    }

    /// The text from `start` to the position. Both are at ASCII bytes
    /// (quotes, backslashes, the ends of values), so the slice exists; `get`
    /// keeps the panic path of string slicing (and the Unicode tables its
    /// message needs) out of the browser SDK's wasm.
    fn slice(&self, start: usize) -> Result<&'de str, JsonError> {
        self.text
            .get(start..self.pos)
            .ok_or_else(|| self.error("not at a character boundary"))
    }

    /// Only whitespace may follow the value.
    pub fn end(&mut self) -> Result<(), JsonError> {
        match self.peek_token() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// The rest of a literal whose first byte was consumed.
    fn literal(&mut self, rest: &[u8]) -> Result<(), JsonError> {
        for &expected in rest {
            match self.peek() {
                Some(b) if b == expected => self.pos += 1,
                Some(_) => return Err(self.error("expected ident")),
                None => return Err(self.error("EOF while parsing a value")),
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let mut n = 0u16;
        for _ in 0..4 {
            let Some(b) = self.peek() else {
                return Err(self.error("EOF while parsing a string"));
            };
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.error("invalid escape")),
            };
            self.pos += 1;
            n = n << 4 | u16::from(digit);
        }
        Ok(n)
    }

    /// A string whose opening quote was consumed. With `decode`, escapes
    /// are decoded (lone surrogates refused); without, only checked.
    fn string(&mut self, decode: bool) -> Result<Text<'de>, JsonError> {
        let bytes = self.bytes();
        let mut start = self.pos;
        let mut owned: Option<String> = None;
        loop {
            // Most of a frame is string contents: find the next byte that
            // ends them or needs a look in one tight loop.
            let rest = bytes.get(self.pos..).unwrap_or_default();
            let Some(skip) = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
                self.pos = bytes.len();
                return Err(self.error("EOF while parsing a string"));
            };
            self.pos += skip;
            match rest[skip] {
                b'"' => {
                    let tail = self.slice(start)?;
                    self.pos += 1;
                    return Ok(match owned {
                        None => Text::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Text::Owned(s)
                        }
                    });
                }
                b'\\' => {
                    if decode {
                        let out = owned.get_or_insert_with(String::new);
                        out.push_str(self.slice(start)?);
                        self.pos += 1;
                        self.escape(true, out)?;
                    } else {
                        // Checked only: nothing is written, nothing allocated.
                        self.pos += 1;
                        self.escape(false, &mut String::new())?;
                    }
                    start = self.pos;
                }
                _ => {
                    self.pos += 1;
                    return Err(self.error(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
            }
        }
    }

    /// One escape after its backslash.
    fn escape(&mut self, decode: bool, out: &mut String) -> Result<(), JsonError> {
        let Some(b) = self.peek() else {
            return Err(self.error("EOF while parsing a string"));
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = self.hex4()?;
                if !decode {
                    return Ok(());
                }
                return self.unicode_escape(n, out);
            }
            _ => return Err(self.error("invalid escape")),
        };
        if decode {
            out.push(c);
        }
        Ok(())
    }

    /// A `\u` escape of four hex digits (and the low half of a surrogate pair).
    fn unicode_escape(&mut self, n: u16, out: &mut String) -> Result<(), JsonError> {
        let code = match n {
            0xDC00..=0xDFFF => return Err(self.error("lone leading surrogate in hex escape")),
            0xD800..=0xDBFF => {
                if self.bytes().get(self.pos..self.pos + 2) != Some(b"\\u") {
                    if self.peek().is_none() {
                        return Err(self.error("EOF while parsing a string"));
                    }
                    self.pos += 1;
                    return Err(self.error("unexpected end of hex escape"));
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                0x1_0000 + ((u32::from(n) - 0xD800) << 10 | (u32::from(low) - 0xDC00))
            }
            n => u32::from(n),
        };
        // Surrogates were handled above, so `code` is a scalar value.
        out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
        Ok(())
    }

    /// The digits of a number after its optional `-`: the integer value
    /// when it has no fraction, exponent or overflow.
    fn number(&mut self) -> Result<(Option<u64>, f64), JsonError> {
        let bytes = self.bytes();
        let digits_from = self.pos;
        match bytes.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error("invalid number"));
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            Some(_) => {
                self.pos += 1;
                return Err(self.error("invalid number"));
            }
            None => return Err(self.error("EOF while parsing a value")),
        }
        let integer = &bytes[digits_from..self.pos];
        let mut exact = integer.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        // The approximate value: the first 19 significant digits, scaled.
        let mut mantissa = 0.0f64;
        let mut exponent = 0i32;
        let mut significant = 0u32;
        for &d in integer {
            if significant < 19 {
                mantissa = mantissa * 10.0 + f64::from(d - b'0');
                significant += u32::from(mantissa != 0.0);
            } else {
                exponent = exponent.saturating_add(1);
            }
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            exact = None;
            let from = self.pos;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                self.pos += 1;
                if significant < 19 {
                    mantissa = mantissa * 10.0 + f64::from(d - b'0');
                    significant += u32::from(mantissa != 0.0);
                    exponent = exponent.saturating_sub(1);
                }
            }
            if self.pos == from {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            exact = None;
            let negative = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let from = self.pos;
            let mut value = 0i32;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                self.pos += 1;
                value = value.saturating_mul(10).saturating_add(i32::from(d - b'0'));
            }
            if self.pos == from {
                if self.peek().is_some() {
                    self.pos += 1;
                }
                return Err(self.error("invalid number"));
            }
            exponent = exponent.saturating_add(if negative { -value } else { value });
        }
        let approximate = if mantissa == 0.0 {
            0.0
        } else if exponent < 0 {
            mantissa / 10f64.powi(exponent.saturating_neg())
        } else {
            mantissa * 10f64.powi(exponent)
        };
        Ok((exact, approximate))
    }

    /// Skips one value, checking it is valid JSON. Iterative: payloads may
    /// nest deeper than values read into types.
    fn skip_value(&mut self) -> Result<(), JsonError> {
        // The open arrays (`true`) and objects (`false`) around the position.
        let mut open: Vec<bool> = Vec::new();
        loop {
            // A value.
            match self.peek_token() {
                Some(b'"') => {
                    self.pos += 1;
                    self.string(false)?;
                }
                Some(b'[') => {
                    self.pos += 1;
                    if self.peek_token() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(true);
                        continue;
                    }
                }
                Some(b'{') => {
                    self.pos += 1;
                    if self.peek_token() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(false);
                        self.key_and_colon()?;
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // What follows it: a comma, or the ends of arrays and objects.
            loop {
                let Some(&in_array) = open.last() else {
                    return Ok(());
                };
                match self.peek_token() {
                    Some(b',') => {
                        self.pos += 1;
                        if !in_array {
                            self.key_and_colon()?;
                        }
                        break;
                    }
                    Some(b']') if in_array => {
                        self.pos += 1;
                        open.pop();
                    }
                    Some(b'}') if !in_array => {
                        self.pos += 1;
                        open.pop();
                    }
                    Some(_) if in_array => return Err(self.error("expected `,` or `]`")),
                    Some(_) => return Err(self.error("expected `,` or `}`")),
                    None if in_array => return Err(self.error("EOF while parsing a list")),
                    None => return Err(self.error("EOF while parsing an object")),
                }
            }
        }
    }

    /// An object key (checked, not decoded) and its colon.
    fn key_and_colon(&mut self) -> Result<(), JsonError> {
        match self.peek_token() {
            Some(b'"') => self.pos += 1,
            Some(_) => return Err(self.error("key must be a string")),
            None => return Err(self.error("EOF while parsing an object")),
        }
        self.string(false)?;
        self.colon()
    }

    fn colon(&mut self) -> Result<(), JsonError> {
        match self.peek_token() {
            Some(b':') => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.error("expected `:`")),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    /// `null`, `true`, `false` or a number, skipped.
    fn scalar(&mut self) -> Result<(), JsonError> {
        match self.peek_token() {
            Some(b'n') => {
                self.pos += 1;
                self.literal(b"ull")
            }
            Some(b't') => {
                self.pos += 1;
                self.literal(b"rue")
            }
            Some(b'f') => {
                self.pos += 1;
                self.literal(b"alse")
            }
            Some(b'-') => {
                self.pos += 1;
                self.number().map(drop)
            }
            Some(b'0'..=b'9') => self.number().map(drop),
            Some(_) => Err(self.error("expected value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }

    /// The next value's token; `[` and `{` are consumed, their contents
    /// are not. Not generic, so that each visitor's `deserialize_any` stays
    /// a small match.
    fn token(&mut self) -> Result<Token<'de>, JsonError> {
        Ok(match self.peek_token() {
            Some(b'n') => {
                self.pos += 1;
                self.literal(b"ull")?;
                Token::Null
            }
            Some(b't') => {
                self.pos += 1;
                self.literal(b"rue")?;
                Token::Bool(true)
            }
            Some(b'f') => {
                self.pos += 1;
                self.literal(b"alse")?;
                Token::Bool(false)
            }
            Some(b'-') => {
                self.pos += 1;
                let (exact, approximate) = self.number()?;
                // As serde_json: `-0` and negatives beyond `i64` are floats.
                match exact {
                    Some(n @ 1..=0x8000_0000_0000_0000) => Token::Signed((n as i64).wrapping_neg()),
                    _ => Token::Float(-self.finite(approximate)?),
                }
            }
            Some(b'0'..=b'9') => match self.number()? {
                (Some(n), _) => Token::Unsigned(n),
                (None, approximate) => Token::Float(self.finite(approximate)?),
            },
            Some(b'"') => {
                self.pos += 1;
                Token::Str(self.string(true)?)
            }
            Some(b'[') => {
                self.pos += 1;
                Token::Array
            }
            Some(b'{') => {
                self.pos += 1;
                Token::Object
            }
            Some(_) => return Err(self.error("expected value")),
            None => return Err(self.error("EOF while parsing a value")),
        })
    }

    /// As serde_json, a number read as a value must fit an `f64` (skipped
    /// ones need not).
    fn finite(&self, approximate: f64) -> Result<f64, JsonError> {
        if approximate.is_finite() {
            Ok(approximate)
        } else {
            Err(self.error("number out of range"))
        }
    }

    /// The `]` or `}` after a visitor read an array's or object's contents.
    fn close(&mut self, end: u8) -> Result<(), JsonError> {
        match self.peek_token() {
            Some(b) if b == end => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.error("trailing characters")),
            None if end == b']' => Err(self.error("EOF while parsing a list")),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth_left = self
            .depth_left
            .checked_sub(1)
            .ok_or_else(|| self.error("recursion limit exceeded"))?;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth_left += 1;
    }
}

impl<'de> de::Deserializer<'de> for &mut JsonText<'de> {
    type Error = JsonError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        let result = match self.token()? {
            Token::Null => visitor.visit_unit(),
            Token::Bool(b) => visitor.visit_bool(b),
            Token::Unsigned(n) => visitor.visit_u64(n),
            Token::Signed(n) => visitor.visit_i64(n),
            Token::Float(n) => visitor.visit_f64(n),
            Token::Str(Text::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Token::Str(Text::Owned(s)) => visitor.visit_string(s),
            Token::Array => {
                self.enter()?;
                let value = visitor.visit_seq(Elements {
                    reader: &mut *self,
                    first: true,
                });
                self.leave();
                value.and_then(|value| self.close(b']').map(|()| value))
            }
            Token::Object => {
                self.enter()?;
                let value = visitor.visit_map(Entries {
                    reader: &mut *self,
                    first: true,
                });
                self.leave();
                value.and_then(|value| self.close(b'}').map(|()| value))
            }
        };
        result.map_err(|error| self.located(error))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        if self.peek_token() == Some(b'n') {
            self.pos += 1;
            self.literal(b"ull")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        if name == RAW_VALUE_TOKEN {
            self.peek_token();
            let start = self.pos;
            self.skip_value()?;
            let raw = self.slice(start)?;
            return visitor.visit_map(RawValueEntry { raw: Some(raw) });
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        match self.token()? {
            Token::Str(Text::Borrowed(s)) => {
                visitor.visit_enum(BorrowedStrDeserializer::<JsonError>::new(s))
            }
            Token::Str(Text::Owned(s)) => {
                visitor.visit_enum(StringDeserializer::<JsonError>::new(s))
            }
            Token::Object => {
                self.enter()?;
                let value = visitor.visit_enum(Variant { reader: &mut *self });
                self.leave();
                value.and_then(|value| self.close(b'}').map(|()| value))
            }
            _ => Err(self.error("expected value")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsonError> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier
    }
}

/// The elements of an array whose `[` was read.
struct Elements<'a, 'de> {
    reader: &'a mut JsonText<'de>,
    first: bool,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = JsonError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, JsonError> {
        let reader = &mut *self.reader;
        match reader.peek_token() {
            Some(b']') => return Ok(None),
            Some(b',') if !self.first => {
                reader.pos += 1;
                if reader.peek_token() == Some(b']') {
                    return Err(reader.error("trailing comma"));
                }
            }
            Some(_) if self.first => {}
            Some(_) => return Err(reader.error("expected `,` or `]`")),
            None => return Err(reader.error("EOF while parsing a list")),
        }
        self.first = false;
        seed.deserialize(&mut *reader).map(Some)
    }
}

/// The entries of an object whose `{` was read.
struct Entries<'a, 'de> {
    reader: &'a mut JsonText<'de>,
    first: bool,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = JsonError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, JsonError> {
        let reader = &mut *self.reader;
        match reader.peek_token() {
            Some(b'}') => return Ok(None),
            Some(b',') if !self.first => {
                reader.pos += 1;
                match reader.peek_token() {
                    Some(b'"') => {}
                    Some(b'}') => return Err(reader.error("trailing comma")),
                    Some(_) => return Err(reader.error("key must be a string")),
                    None => return Err(reader.error("EOF while parsing a value")),
                }
            }
            Some(b'"') if self.first => {}
            Some(_) if self.first => return Err(reader.error("key must be a string")),
            Some(_) => return Err(reader.error("expected `,` or `}`")),
            None => return Err(reader.error("EOF while parsing an object")),
        }
        self.first = false;
        reader.pos += 1;
        let key = match reader.string(true)? {
            Text::Borrowed(s) => seed.deserialize(BorrowedStrDeserializer::<JsonError>::new(s)),
            Text::Owned(s) => seed.deserialize(StringDeserializer::<JsonError>::new(s)),
        };
        key.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, JsonError> {
        self.reader.colon()?;
        seed.deserialize(&mut *self.reader)
    }
}

/// `{"variant": value}` for an enum: the `{` was read.
struct Variant<'a, 'de> {
    reader: &'a mut JsonText<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = JsonError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), JsonError> {
        let reader = &mut *self.reader;
        match reader.peek_token() {
            Some(b'"') => reader.pos += 1,
            Some(_) => return Err(reader.error("key must be a string")),
            None => return Err(reader.error("EOF while parsing a value")),
        }
        let variant = match reader.string(true)? {
            Text::Borrowed(s) => seed.deserialize(BorrowedStrDeserializer::<JsonError>::new(s)),
            Text::Owned(s) => seed.deserialize(StringDeserializer::<JsonError>::new(s)),
        }?;
        reader.colon()?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = JsonError;

    fn unit_variant(self) -> Result<(), JsonError> {
        de::Deserialize::deserialize(&mut *self.reader)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, JsonError> {
        seed.deserialize(&mut *self.reader)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        de::Deserializer::deserialize_any(&mut *self.reader, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsonError> {
        de::Deserializer::deserialize_any(&mut *self.reader, visitor)
    }
}

/// The one entry serde_json's `RawValue` visitor expects: its token, then
/// the raw text.
struct RawValueEntry<'de> {
    raw: Option<&'de str>,
}

impl<'de> de::MapAccess<'de> for RawValueEntry<'de> {
    type Error = JsonError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, JsonError> {
        if self.raw.is_none() {
            return Ok(None);
        }
        seed.deserialize(BorrowedStrDeserializer::<JsonError>::new(RAW_VALUE_TOKEN))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, JsonError> {
        let raw = self.raw.take().unwrap_or_default();
        seed.deserialize(BorrowedStrDeserializer::<JsonError>::new(raw))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::*;

    /// Pieces of JSON, valid and not, that random concatenations are made of.
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"a\"",
        "\"\\u00e9\"",
        "\"\\ud800\"",
        "\"\\x\"",
        "\"",
        "\\",
        "1",
        "-1",
        "0",
        "01",
        "1.5",
        "1e9",
        "-",
        ".",
        "e",
        "true",
        "null",
        "nul",
        "\u{1}",
        "é",
    ];

    fn json_like() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOKENS), 0..16).prop_map(|t| t.concat())
    }

    /// `payload` accepts what serde_json's `RawValue` accepts, with the same text.
    fn assert_payload_as_serde_json(text: &str) {
        let ours = payload(text).map(|p| p.get().to_owned());
        let reference = RawValue::from_string(text.to_owned()).map(|p| p.get().trim().to_owned());
        assert_eq!(
            ours.is_ok(),
            reference.is_ok(),
            "{text:?}: {ours:?} / {reference:?}"
        );
        if let (Ok(a), Ok(b)) = (ours, reference) {
            assert_eq!(a, b, "{text:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn payloads_are_checked_as_serde_json_checks_them(text in json_like()) {
            assert_payload_as_serde_json(&text);
        }

        #[test]
        fn values_read_into_types_match_serde_json(text in json_like()) {
            // Strings with escapes, maps, lists, integers and null.
            type Value = Option<Vec<std::collections::BTreeMap<String, Option<u64>>>>;
            let ours = from_str::<Value>(&text);
            let reference = serde_json::from_str::<Value>(&text);
            prop_assert_eq!(ours.is_ok(), reference.is_ok(), "{:?}: {:?} / {:?}", text, ours, reference);
            if let (Ok(a), Ok(b)) = (ours, reference) {
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn payloads_keep_their_text() {
        for text in [
            " {\"a\" : [1, 2.5e-3, \"\\ud800\"]}\n",
            "1e400",
            "-0",
            "\"\\ud83d\\ude00\"",
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "",
            "[1,]",
            "{\"a\":1,}",
            "\"a\u{1}\"",
            "1 2",
        ] {
            assert_payload_as_serde_json(text);
        }
    }

    #[test]
    fn strings_are_decoded_as_serde_json_decodes_them() {
        for text in [
            r#""\ud83d\ude00""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\n""#,
            r#""a\"b\\c\/\b\f\n\r\t""#,
            r#""\u00e9""#,
            r#""\u00""#,
            "\"é☃\"",
        ] {
            let ours = from_str::<String>(text);
            let reference = serde_json::from_str::<String>(text);
            assert_eq!(
                ours.is_ok(),
                reference.is_ok(),
                "{text}: {ours:?} / {reference:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, reference) {
                assert_eq!(a, b, "{text}");
            }
        }
    }

    #[test]
    fn errors_name_the_problem_and_where_it_is() {
        let e = from_str::<u64>("1.5").expect_err("a float is not a u64");
        assert_eq!(
            e.to_string(),
            "invalid type: floating point number, expected u64 at line 1 column 3"
        );
        let e = from_str::<u64>("\"x\"").expect_err("a string is not a u64");
        assert_eq!(
            e.to_string(),
            "invalid type: string \"x\", expected u64 at line 1 column 3"
        );
        assert_eq!(
            Quoted("a\"b\\c\nd\u{1}é").to_string(),
            r#""a\"b\\c\nd\u0001é""#
        );
        let e = from_str::<Vec<u64>>("[1,\n2,]").expect_err("trailing comma");
        assert_eq!(e.to_string(), "trailing comma at line 2 column 2");
        let e = from_str::<u64>("").expect_err("empty");
        assert_eq!(
            e.to_string(),
            "EOF while parsing a value at line 1 column 0"
        );
    }
}
