//! Writing frames as JSON text: a serde `Serializer` that produces what
//! serde_json produces for every frame (compact, the same string escapes,
//! payloads written verbatim), without serde_json's serializer, whose error
//! paths bring string slicing panics and with them Unicode tables into the
//! browser SDK's wasm.
//!
//! What frames never hold is refused with an error instead of written:
//! floats, 128-bit integers, and map keys that are not strings.

use serde::ser::{self, Impossible, Serialize};

use super::{JsonError, RAW_VALUE_TOKEN};

/// `value` as compact JSON text.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, JsonError> {
    // As serde_json: most frames fit, so most frames allocate once.
    let mut writer = Writer {
        out: String::with_capacity(128),
    };
    value.serialize(&mut writer)?;
    Ok(writer.out)
}

/// The text written so far.
struct Writer {
    out: String,
}

fn unsupported(what: &str) -> JsonError {
    ser::Error::custom(format_args!("{what} cannot be written as a frame"))
}

impl ser::Error for JsonError {
    #[cold]
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        <JsonError as serde::de::Error>::custom(msg)
    }
}

impl Writer {
    /// A JSON string literal, escaped as serde_json escapes it.
    fn string(&mut self, text: &str) {
        // Writing to a String cannot fail.
        let _ = super::write_string(&mut self.out, text);
    }

    /// The decimal digits of `n`, without `fmt` (it is on every frame's
    /// path: ids, seqs, timestamps).
    fn unsigned(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &digit in &digits[at..] {
            self.out.push(char::from(digit));
        }
    }
}

/// An array or object being written: whether an element came already, and
/// whether this is serde_json's raw-value struct (its one field is text to
/// write verbatim).
struct Compound<'a> {
    writer: &'a mut Writer,
    first: bool,
    raw: bool,
    /// Closing text: `]`, `}`, or `]}`/`}}` for a variant.
    close: &'static str,
}

impl Compound<'_> {
    fn comma(&mut self) {
        if !self.first {
            self.writer.out.push(',');
        }
        self.first = false;
    }

    fn end(self) {
        self.writer.out.push_str(self.close);
    }
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = JsonError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), JsonError> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), JsonError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), JsonError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), JsonError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), JsonError> {
        if v < 0 {
            self.out.push('-');
        }
        self.unsigned(v.unsigned_abs());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), JsonError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), JsonError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), JsonError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), JsonError> {
        self.unsigned(v);
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), JsonError> {
        Err(unsupported("a float"))
    }
    fn serialize_f64(self, _: f64) -> Result<(), JsonError> {
        Err(unsupported("a float"))
    }
    fn serialize_char(self, v: char) -> Result<(), JsonError> {
        self.string(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), JsonError> {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), JsonError> {
        let mut seq = ser::Serializer::serialize_seq(self, Some(v.len()))?;
        for byte in v {
            ser::SerializeSeq::serialize_element(&mut seq, byte)?;
        }
        ser::SerializeSeq::end(seq)
    }
    fn serialize_none(self) -> Result<(), JsonError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), JsonError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), JsonError> {
        self.out.push_str("null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), JsonError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), JsonError> {
        self.string(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        self.out.push('{');
        self.string(variant);
        self.out.push(':');
        value.serialize(&mut *self)?;
        self.out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, JsonError> {
        self.out.push('[');
        Ok(Compound {
            writer: self,
            first: true,
            raw: false,
            close: "]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, JsonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, JsonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, JsonError> {
        self.out.push('{');
        self.string(variant);
        self.out.push_str(":[");
        Ok(Compound {
            writer: self,
            first: true,
            raw: false,
            close: "]}",
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, JsonError> {
        self.out.push('{');
        Ok(Compound {
            writer: self,
            first: true,
            raw: false,
            close: "}",
        })
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Compound<'a>, JsonError> {
        let raw = name == RAW_VALUE_TOKEN;
        if !raw {
            self.out.push('{');
        }
        Ok(Compound {
            writer: self,
            first: true,
            raw,
            close: if raw { "" } else { "}" },
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, JsonError> {
        self.out.push('{');
        self.string(variant);
        self.out.push_str(":{");
        Ok(Compound {
            writer: self,
            first: true,
            raw: false,
            close: "}}",
        })
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        self.comma();
        value.serialize(&mut *self.writer)
    }
    fn end(self) -> Result<(), JsonError> {
        Compound::end(self);
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), JsonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), JsonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), JsonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), JsonError> {
        self.comma();
        key.serialize(StrOnly {
            writer: &mut *self.writer,
            raw: false,
        })?;
        self.writer.out.push(':');
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        value.serialize(&mut *self.writer)
    }
    fn end(self) -> Result<(), JsonError> {
        Compound::end(self);
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        if self.raw {
            return value.serialize(StrOnly {
                writer: &mut *self.writer,
                raw: true,
            });
        }
        self.comma();
        self.writer.string(key);
        self.writer.out.push(':');
        value.serialize(&mut *self.writer)
    }
    fn end(self) -> Result<(), JsonError> {
        Compound::end(self);
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<(), JsonError> {
        Compound::end(self);
        Ok(())
    }
}

/// A map key (a string only), or with `raw` the text of serde_json's raw
/// value, written verbatim.
struct StrOnly<'a> {
    writer: &'a mut Writer,
    raw: bool,
}

macro_rules! refuse {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), JsonError> {
            Err(self.refused())
        })*
    };
}

impl StrOnly<'_> {
    fn refused(&self) -> JsonError {
        unsupported(if self.raw {
            "a raw value that is not text"
        } else {
            "a map key that is not a string"
        })
    }
}

impl ser::Serializer for StrOnly<'_> {
    type Ok = ();
    type Error = JsonError;
    type SerializeSeq = Impossible<(), JsonError>;
    type SerializeTuple = Impossible<(), JsonError>;
    type SerializeTupleStruct = Impossible<(), JsonError>;
    type SerializeTupleVariant = Impossible<(), JsonError>;
    type SerializeMap = Impossible<(), JsonError>;
    type SerializeStruct = Impossible<(), JsonError>;
    type SerializeStructVariant = Impossible<(), JsonError>;

    fn serialize_str(self, v: &str) -> Result<(), JsonError> {
        if self.raw {
            self.writer.out.push_str(v);
        } else {
            self.writer.string(v);
        }
        Ok(())
    }
    fn serialize_bool(self, _: bool) -> Result<(), JsonError> {
        Err(self.refused())
    }
    refuse! {
        serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
        serialize_u8(u8), serialize_u16(u16), serialize_u32(u32), serialize_u64(u64),
        serialize_f32(f32), serialize_f64(f64), serialize_char(char), serialize_bytes(&[u8]),
        serialize_none(), serialize_unit(), serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), JsonError> {
        Err(self.refused())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), JsonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), JsonError> {
        Err(self.refused())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, JsonError> {
        Err(self.refused())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, JsonError> {
        Err(self.refused())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, JsonError> {
        Err(self.refused())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, JsonError> {
        Err(self.refused())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, JsonError> {
        Err(self.refused())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, JsonError> {
        Err(self.refused())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, JsonError> {
        Err(self.refused())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::to_string;
    use crate::frames::{
        Auth, ClientFrame, DeliveryRef, Nack, Ping, Publish, PublishOpts, StartFrom, Subscribe,
        SubscribeOpts,
    };
    use crate::{Group, Pattern, Topic};

    fn assert_written_as_serde_json<T: Serialize + ?Sized>(value: &T) {
        assert_eq!(
            to_string(value).expect("writable"),
            serde_json::to_string(value).expect("serializable")
        );
    }

    #[derive(Serialize)]
    enum Shapes {
        Unit,
        Newtype(u8),
        Tuple(i8, bool),
        Struct { a: Option<u16>, b: () },
    }

    #[derive(Serialize)]
    struct Wrapper(i32);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn strings_and_maps_are_written_as_serde_json_writes_them(
            text in any::<String>(),
            map in prop::collection::btree_map(any::<String>(), any::<String>(), 0..4),
            numbers in prop::collection::vec((any::<u64>(), any::<i64>(), any::<Option<u32>>()), 0..4),
        ) {
            assert_written_as_serde_json(&text);
            assert_written_as_serde_json(&map);
            assert_written_as_serde_json(&numbers);
        }

        #[test]
        fn client_frames_are_written_as_serde_json_writes_them(
            text in any::<String>(),
            headers in prop::collection::btree_map("[a-z\u{0}-\u{1f}\"\\\\é]{0,4}", any::<String>(), 0..3),
            seq in any::<u64>(),
            number in any::<u32>(),
            flag in any::<Option<bool>>(),
        ) {
            let topic = Topic::parse("a.b").expect("topic");
            let pattern = Pattern::parse("a.*").expect("pattern");
            let group = Group::parse("g").expect("group");
            let payload = crate::json_text::payload(r#" {"x": [1, 2.5e3, "\u00e9"]} "#).expect("payload");
            let frames = [
                ClientFrame::Auth(Auth { token: Some(text.clone()), v: Some(number), client: None }),
                ClientFrame::Publish(Publish {
                    topic,
                    payload,
                    opts: Some(PublishOpts {
                        headers: Some(headers),
                        key: Some(text.clone()),
                        tags: Some(vec![text.clone(), String::new()]),
                        caused_by: Some(vec![]),
                        sid: None,
                        ts: Some(seq),
                        id: Some("e".into()),
                    }),
                    rid: Some(text.clone()),
                }),
                ClientFrame::Subscribe(Subscribe {
                    topic: pattern.clone(),
                    group: Some(group.clone()),
                    opts: Some(SubscribeOpts {
                        from: Some(StartFrom::Seq(seq)),
                        max_inflight: Some(number),
                        ack_timeout_ms: None,
                        max_deliver: None,
                        snapshot: flag,
                    }),
                    rid: None,
                }),
                ClientFrame::Ack(DeliveryRef { topic: pattern.clone(), group: Some(group), id: text.clone(), seq: Some(seq) }),
                ClientFrame::Nack(Nack {
                    topic: pattern,
                    group: None,
                    id: text.clone(),
                    seq: None,
                    reason: Some(text),
                    delay_ms: Some(seq),
                    final_: flag,
                }),
                ClientFrame::Pong(Ping { rid: None }),
            ];
            for frame in &frames {
                assert_written_as_serde_json(frame);
            }
        }
    }

    #[test]
    fn every_shape_is_written_as_serde_json_writes_it() {
        assert_written_as_serde_json(&[
            Shapes::Unit,
            Shapes::Newtype(7),
            Shapes::Tuple(-1, true),
            Shapes::Struct { a: None, b: () },
            Shapes::Struct { a: Some(3), b: () },
        ]);
        assert_written_as_serde_json(&(Wrapper(-5), 'x', '"', (), b"ab".as_slice()));
        assert_written_as_serde_json(&BTreeMap::<String, Vec<u8>>::new());
        assert_written_as_serde_json("\u{0}\u{1f}\u{7f}\u{2028}\\\"/");
    }

    #[test]
    fn what_frames_never_hold_is_refused() {
        assert!(to_string(&1.5f64).is_err());
        assert!(to_string(&BTreeMap::from([(1u8, 2u8)])).is_err());
        assert!(to_string(&1u128).is_err());
    }
}
