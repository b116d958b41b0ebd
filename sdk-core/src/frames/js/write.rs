//! The JSON text of the frames the browser SDK sends: a serde
//! `Serializer` driven by the frames' derived `Serialize`, writing what
//! serde_json writes (compact, the same escapes), so the hub cannot tell
//! the two apart. It exists so that the browser SDK's wasm carries no
//! serde_json: a `PUBLISH` payload is the text `JSON.stringify` wrote
//! ([`JsPayload`](super::JsPayload)), which serde_json could only embed
//! after parsing it again; this writer embeds it as it is. It writes no
//! floats (no frame has one): a float is an error, and Rust's float
//! formatting stays out of the wasm.

use std::fmt::{self, Write as _};

use serde::Serialize;
use serde::ser;

use crate::quoted::Quoted;

/// The newtype-struct name of a value written as raw JSON text.
pub(super) const RAW_JSON: &str = "promhub::RawJson";

/// Why a value could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError(String);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriteError {}

impl ser::Error for WriteError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WriteError(msg.to_string())
    }
}

/// `value` as compact JSON text.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, WriteError> {
    let mut writer = Writer {
        out: String::new(),
        raw: false,
    };
    value.serialize(&mut writer)?;
    Ok(writer.out)
}

struct Writer {
    out: String,
    /// The next string is raw JSON text, written as it is.
    raw: bool,
}

impl Writer {
    fn push(&mut self, text: &str) {
        self.out.push_str(text);
    }

    /// Writing to a `String` cannot fail.
    fn display(&mut self, value: impl fmt::Display) {
        let _ = write!(self.out, "{value}");
    }

    fn open(&mut self, open: &'static str, close: &'static str) -> Compound<'_> {
        self.push(open);
        Compound {
            writer: self,
            first: true,
            close,
        }
    }

    /// `{"variant":` before a variant's value.
    fn variant(&mut self, variant: &str) {
        self.push("{");
        self.display(Quoted(variant));
        self.push(":");
    }
}

/// What no frame has, so what is not written.
fn refused(what: &str) -> WriteError {
    WriteError(what.to_owned())
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = WriteError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), WriteError> {
        self.push(if v { "true" } else { "false" });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), WriteError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<(), WriteError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<(), WriteError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<(), WriteError> {
        self.display(v);
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), WriteError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), WriteError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), WriteError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), WriteError> {
        self.display(v);
        Ok(())
    }

    fn serialize_f32(self, _v: f32) -> Result<(), WriteError> {
        Err(refused("a float cannot be written (no frame has one)"))
    }

    fn serialize_f64(self, _v: f64) -> Result<(), WriteError> {
        Err(refused("a float cannot be written (no frame has one)"))
    }

    fn serialize_char(self, v: char) -> Result<(), WriteError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), WriteError> {
        if std::mem::take(&mut self.raw) {
            self.push(v);
        } else {
            self.display(Quoted(v));
        }
        Ok(())
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<(), WriteError> {
        Err(refused(
            "a byte string cannot be written (no frame has one)",
        ))
    }

    fn serialize_none(self) -> Result<(), WriteError> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), WriteError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), WriteError> {
        self.push("null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), WriteError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), WriteError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), WriteError> {
        self.raw = name == RAW_JSON;
        let written = value.serialize(&mut *self);
        if std::mem::take(&mut self.raw) {
            return Err(WriteError("raw JSON that is not a string".to_owned()));
        }
        written
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), WriteError> {
        self.variant(variant);
        value.serialize(&mut *self)?;
        self.push("}");
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, WriteError> {
        Ok(self.open("[", "]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, WriteError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, WriteError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, WriteError> {
        self.variant(variant);
        Ok(self.open("[", "]}"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, WriteError> {
        Ok(self.open("{", "}"))
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, WriteError> {
        Ok(self.open("{", "}"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, WriteError> {
        self.variant(variant);
        Ok(self.open("{", "}}"))
    }
}

/// An array or object being written.
struct Compound<'a> {
    writer: &'a mut Writer,
    first: bool,
    close: &'static str,
}

impl Compound<'_> {
    fn comma(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.writer.push(",");
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WriteError> {
        self.comma();
        value.serialize(&mut *self.writer)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), WriteError> {
        self.comma();
        self.writer.display(Quoted(key));
        self.writer.push(":");
        value.serialize(&mut *self.writer)
    }

    fn close(self) -> Result<(), WriteError> {
        self.writer.push(self.close);
        Ok(())
    }
}

/// The serde traits of sequences and tuples: each writes its elements.
macro_rules! elements {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = WriteError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WriteError> {
                self.element(value)
            }
            fn end(self) -> Result<(), WriteError> {
                self.close()
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// The serde traits of structs: each writes its fields by name.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = WriteError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), WriteError> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), WriteError> {
                self.close()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = WriteError;
    /// Keys must be strings (as in JSON; every map in a frame has string
    /// keys).
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), WriteError> {
        self.comma();
        let at = self.writer.out.len();
        key.serialize(&mut *self.writer)?;
        if self.writer.out.as_bytes().get(at) != Some(&b'"') {
            return Err(WriteError("a map key must be a string".to_owned()));
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WriteError> {
        self.writer.push(":");
        value.serialize(&mut *self.writer)
    }
    fn end(self) -> Result<(), WriteError> {
        self.close()
    }
}
