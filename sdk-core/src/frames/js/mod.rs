//! Frames in the browser SDK (feature `js`): the [`Js`] codec.
//!
//! A hub frame's text is parsed once, by the engine's `JSON.parse`, and the
//! frame is read from the resulting value with the derived `Deserialize`
//! of its struct, through the serde `Deserializer` below: the same steps
//! as for text ([`decode`](super::decode)), reading objects by their field
//! names. The event's payload is left unread ([`Unread`]): the application
//! gets it as the JavaScript value `JSON.parse` made, never parsed or
//! stringified again. Frames to the hub are written by [`write`], the
//! payload of a `PUBLISH` being the text `JSON.stringify` wrote
//! ([`JsPayload`]); so no serde_json is in the browser SDK's wasm.
//!
//! What the parsed value cannot tell, and so what differs from decoding the
//! text with serde_json:
//! - a number is a double: `1.0` or `1e3` reads as an integer, and an
//!   integer beyond 2^53 − 1 (where doubles skip integers) is refused;
//! - a key given twice keeps its last value instead of being refused;
//! - a string with a lone surrogate escape (`"\ud800"`) reads with U+FFFD in
//!   its place instead of being refused.
//! - a number past a double's range (`1e400`) is `Infinity`, a number of
//!   the wrong kind, where serde_json calls the whole text malformed;
//! - an error code is read from its name only, not also from serde's map
//!   form of an enum (`{"forbidden": null}`), which the hub never writes.
//!
//! `tests` (run in Node) checks both ways against serde_json on generated
//! and damaged frames, and pins each difference above.
//!
//! Errors never format a float (serde's default messages do, and Rust's
//! float formatting would cost the browser SDK several KiB of wasm).

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use js_sys::{Array, JsString, Object};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde::forward_to_deserialize_any;
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};

use super::decode::{self, DecodeError, FrameSource};
use super::{ClientFrame, Event, HubFrame, Publish, SamePayload, Unread};
use crate::client::Codec;
use crate::quoted::Quoted;

pub mod write;

#[cfg(all(test, target_arch = "wasm32"))]
mod tests;

/// The browser SDK's codec: frames are written by [`write`], `PUBLISH`
/// payloads are [`JsPayload`]s, and `EVENT` payloads stay in the
/// JavaScript value the frame was parsed into ([`Unread`]; see
/// [`decode_hub_frame`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Js;

impl Codec for Js {
    type Payload = JsPayload;
    type EventPayload = Unread;

    fn encode(frame: &ClientFrame<Publish<JsPayload>>) -> String {
        write::to_string(frame).unwrap_or_else(|_| {
            // Unreachable in practice (frames hold no floats, their maps
            // have string keys); report rather than panic.
            r#"{"op":"ERR","code":"internal","msg":"encode failed"}"#.to_owned()
        })
    }
}

/// A `PUBLISH` payload as the text `JSON.stringify` wrote: one JSON value,
/// written into the frame as it is by [`write`] (other serializers write
/// it as a JSON string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsPayload(String);

impl JsPayload {
    /// `json` must be one JSON value, as `JSON.stringify` writes it: it is
    /// not checked (the hub refuses a frame that is not JSON).
    pub fn new(json: String) -> Self {
        JsPayload(json)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for JsPayload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(write::RAW_JSON, &self.0)
    }
}

impl SamePayload for JsPayload {
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

/// A hub frame as the browser SDK reads it: its payload left in the
/// parsed JavaScript value.
pub type JsHubFrame = HubFrame<Event<Unread>>;

/// The largest integer a double holds exactly (and every one below it).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(catch, js_namespace = JSON, js_name = parse)]
    fn json_parse(text: &JsValue) -> Result<JsValue, JsValue>;

    /// `String(value)`: what `JSON.parse` threw, as text.
    #[wasm_bindgen(js_name = String)]
    fn text_of(value: &JsValue) -> String;

    /// `Object.prototype.toString`-free property access: `this[key]`.
    type Fields;

    #[wasm_bindgen(method, indexing_getter)]
    fn get(this: &Fields, key: &JsString) -> JsValue;
}

/// Parses a hub frame's text (a JavaScript string) with `JSON.parse` and
/// decodes it. Returns the parsed value as well (`undefined` when the text
/// is not JSON): the driver hands an `EVENT`'s `event` and `ctx` to the
/// application from it.
pub fn decode_hub_frame(text: &JsValue) -> (JsValue, Result<JsHubFrame, DecodeError>) {
    let parsed = json_parse(text).map_err(|error| JsDecodeError(text_of(&error)));
    let decoded = decode::decode(&Parsed(&parsed));
    (parsed.unwrap_or(JsValue::UNDEFINED), decoded)
}

/// A frame as `JSON.parse` gave it (or why it could not).
struct Parsed<'a>(&'a Result<JsValue, JsDecodeError>);

impl FrameSource for Parsed<'_> {
    type Error = JsDecodeError;
    fn read<T: DeserializeOwned>(&self) -> Result<T, JsDecodeError> {
        match self.0 {
            Ok(value) => T::deserialize(Value(value.clone())),
            Err(error) => Err(error.clone()),
        }
    }
}

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsDecodeError(String);

impl fmt::Display for JsDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsDecodeError {}

impl de::Error for JsDecodeError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        JsDecodeError(msg.to_string())
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

/// `Unexpected` in serde's words, without the value (but a string's):
/// floats are never formatted.
struct Described<'a>(Unexpected<'a>);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            Unexpected::Str(s) => return write!(f, "string {}", Quoted(s)),
            Unexpected::Bool(_) => "a boolean",
            Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
            Unexpected::Float(_) => "a floating point number",
            Unexpected::Unit => "null",
            Unexpected::Seq => "a sequence",
            Unexpected::Map => "a map",
            Unexpected::Other(other) => other,
            _ => "another kind of value",
        };
        f.write_str(kind)
    }
}

/// The field names of every struct read so far, as JavaScript strings,
/// by the address of the struct's (static) field list: made once, not for
/// every frame.
#[derive(Default)]
struct FieldNames(Vec<(usize, Rc<[JsString]>)>);

impl FieldNames {
    fn of(fields: &'static [&'static str]) -> Rc<[JsString]> {
        thread_local! {
            static NAMES: RefCell<FieldNames> = RefCell::default();
        }
        let at = fields.as_ptr() as usize;
        NAMES.with(|names| {
            let mut names = names.borrow_mut();
            if let Some((_, made)) = names.0.iter().find(|(key, _)| *key == at) {
                return made.clone();
            }
            let made: Rc<[JsString]> = fields.iter().map(|name| JsString::from(*name)).collect();
            names.0.push((at, made.clone()));
            made
        })
    }
}

/// One value made by `JSON.parse`: an object, array, string, number,
/// boolean or null.
struct Value(JsValue);

impl Value {
    /// A whole number a double holds exactly, if the value is one.
    fn integer(&self) -> Option<f64> {
        self.0
            .as_f64()
            .filter(|n| n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER)
    }

    fn is_object(&self) -> bool {
        self.0.is_object() && !self.0.is_null()
    }

    /// The value's kind (not its value) against what was expected.
    #[cold]
    fn invalid_type(&self, expected: &dyn Expected) -> JsDecodeError {
        let unexpected = if self.0.is_string() {
            Unexpected::Other("a string")
        } else if self.0.as_f64().is_some() {
            Unexpected::Other("a number")
        } else if self.0.as_bool().is_some() {
            Unexpected::Bool(false)
        } else if self.0.is_null() || self.0.is_undefined() {
            Unexpected::Unit
        } else if Array::is_array(&self.0) {
            Unexpected::Seq
        } else {
            Unexpected::Map
        };
        de::Error::invalid_type(unexpected, expected)
    }

    fn visit_number<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, JsDecodeError> {
        match (self.integer(), self.0.as_f64()) {
            (Some(n), _) if n >= 0.0 => visitor.visit_u64(n as u64),
            (Some(n), _) => visitor.visit_i64(n as i64),
            (None, Some(n)) => visitor.visit_f64(n),
            (None, None) => Err(self.invalid_type(&visitor)),
        }
    }

    fn visit_array<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        let array: Array = self.0.unchecked_into();
        let length = array.length();
        let value = visitor.visit_seq(Elements {
            array: &array,
            next: 0,
            length,
        })?;
        Ok(value)
    }

    fn visit_object<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        let object: Object = self.0.unchecked_into();
        let keys = Object::keys(&object);
        let length = keys.length();
        visitor.visit_map(Entries {
            object: object.unchecked_ref(),
            keys: &keys,
            next: 0,
            length,
            value: None,
        })
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = JsDecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        if let Some(s) = self.0.as_string() {
            visitor.visit_string(s)
        } else if self.0.as_f64().is_some() {
            self.visit_number(visitor)
        } else if let Some(b) = self.0.as_bool() {
            visitor.visit_bool(b)
        } else if self.0.is_null() || self.0.is_undefined() {
            visitor.visit_unit()
        } else if Array::is_array(&self.0) {
            self.visit_array(visitor)
        } else if self.is_object() {
            self.visit_object(visitor)
        } else {
            Err(self.invalid_type(&visitor))
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        match self.0.as_string() {
            Some(s) => visitor.visit_string(s),
            None => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, JsDecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        self.visit_number(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        self.visit_number(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        match self.0.as_bool() {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, JsDecodeError> {
        if self.0.is_null() || self.0.is_undefined() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, JsDecodeError> {
        visitor.visit_newtype_struct(self)
    }

    /// A struct is read from an object by its field names, and handed to
    /// the visitor as the sequence of its fields in declaration order, as
    /// compact formats (bincode and the like) hand structs over: a field
    /// the object lacks (or has as `undefined`) is a missing element, which
    /// the derived visitor takes as its default, or refuses. Only the
    /// struct's fields are looked at, and the visitor's sequence path is
    /// much smaller wasm than its map path (no keys to match, no duplicate
    /// to check). Anything but an object, an array included, is refused.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsDecodeError> {
        if !self.is_object() || Array::is_array(&self.0) {
            return Err(self.invalid_type(&visitor));
        }
        let fields_in_order = StructFields {
            object: self.0.unchecked_into(),
            names: FieldNames::of(fields),
            next: 0,
        };
        visitor.visit_seq(fields_in_order)
    }

    /// Structs come as sequences ([`deserialize_struct`]): not human
    /// readable in serde's sense (`object_only` lets such sequences
    /// through, while refusing a JSON array).
    ///
    /// [`deserialize_struct`]: de::Deserializer::deserialize_struct
    fn is_human_readable(&self) -> bool {
        false
    }

    /// A unit variant, by its name (the only enums in frames are codes).
    /// serde_json also takes `{"variant": null}`; a parsed frame never
    /// needs it, and it would cost wasm.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, JsDecodeError> {
        match self.0.as_string() {
            Some(variant) => visitor.visit_enum(variant.into_deserializer()),
            None => Err(self.invalid_type(&visitor)),
        }
    }

    /// Not looked at: no call into JavaScript at all.
    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, JsDecodeError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map
    }
}

/// The elements of an array.
struct Elements<'a> {
    array: &'a Array,
    next: u32,
    length: u32,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = JsDecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, JsDecodeError> {
        if self.next >= self.length {
            return Ok(None);
        }
        let item = self.array.get(self.next);
        self.next += 1;
        seed.deserialize(Value(item)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some((self.length - self.next) as usize)
    }
}

/// The entries of an object, in `Object.keys` order.
struct Entries<'a> {
    object: &'a Fields,
    keys: &'a Array,
    next: u32,
    length: u32,
    value: Option<JsValue>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = JsDecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, JsDecodeError> {
        if self.next >= self.length {
            return Ok(None);
        }
        let key = self.keys.get(self.next);
        self.next += 1;
        self.value = Some(self.object.get(key.unchecked_ref()));
        seed.deserialize(Value(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, JsDecodeError> {
        seed.deserialize(Value(self.value.take().unwrap_or(JsValue::UNDEFINED)))
    }
}

/// The fields of a struct, in declaration order, read from an object:
/// absent (and `undefined`) ones are missing elements.
struct StructFields {
    object: Fields,
    names: Rc<[JsString]>,
    next: usize,
}

impl<'de> SeqAccess<'de> for StructFields {
    type Error = JsDecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, JsDecodeError> {
        match self.next_field() {
            Some(value) => seed.deserialize(Value(value)).map(Some),
            None => Ok(None),
        }
    }
}

impl StructFields {
    /// The next field's value, `None` when the object lacks it. Not
    /// generic: one copy for every struct.
    #[inline(never)]
    fn next_field(&mut self) -> Option<JsValue> {
        let name = self.names.get(self.next)?;
        self.next += 1;
        let value = self.object.get(name);
        (!value.is_undefined()).then_some(value)
    }
}
