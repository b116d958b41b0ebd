//! [`Quoted`]: text in double quotes for messages that quote input.

use std::fmt;

/// Text in double quotes, `"` `\\` and control characters escaped as in
/// JSON (as serde_json escapes them): for messages that quote input. Unlike
/// `{:?}` it needs no Unicode tables (which cost the browser SDK ~3 KiB of
/// wasm).
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    /// Slices with `get` rather than indexing: the cuts are at ASCII bytes,
    /// so always char boundaries, and indexing would link the panic path of
    /// string slicing, which formats chars with `{:?}` and so brings Unicode
    /// tables into the browser SDK's wasm.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let text = self.0;
        f.write_str("\"")?;
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
            f.write_str(text.get(plain_from..at).unwrap_or_default())?;
            if escaped.is_empty() {
                f.write_str("\\u00")?;
                fmt::Write::write_char(f, char::from(HEX[usize::from(byte >> 4)]))?;
                fmt::Write::write_char(f, char::from(HEX[usize::from(byte & 0xf)]))?;
            } else {
                f.write_str(escaped)?;
            }
            plain_from = at + 1;
        }
        f.write_str(text.get(plain_from..).unwrap_or_default())?;
        f.write_str("\"")
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use proptest::prelude::*;

    use super::Quoted;

    #[test]
    fn escapes_as_json() {
        assert_eq!(
            Quoted("a\"b\\c\nd\u{1}é").to_string(),
            r#""a\"b\\c\nd\u0001é""#
        );
    }

    proptest! {
        /// The quoted text is the JSON string serde_json writes.
        #[test]
        fn quotes_as_serde_json(text in any::<String>()) {
            prop_assert_eq!(Quoted(&text).to_string(), serde_json::to_string(&text).unwrap());
        }
    }
}
