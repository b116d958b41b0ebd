//! Structs that only deserialize from JSON objects.
//!
//! serde's derived `Deserialize` for a struct also accepts a sequence and
//! reads the fields by position, so `["PUBLISH","r1"]` would decode as a frame
//! and `"opts":[null,"k"]` as publish options. The protocol and policies only
//! have objects; anything else is a wrong type and must be refused.
//!
//! The struct is still read with `deserialize_struct` (its field names
//! passed on): formats that read an object by its field names — the
//! browser SDK's JavaScript objects — keep doing so. Only the visitor
//! changes: it takes a map and refuses everything else, except in formats
//! that are not human readable: those (bincode and the like, and the
//! browser SDK's reader of JavaScript objects) hand every struct over as
//! the sequence of its fields, never an array in its place.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, forward_to_deserialize_any};

/// `T`, deserialized from a map (JSON object) only.
pub(crate) struct ObjectOnly<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(MapsOnly(deserializer)).map(ObjectOnly)
    }
}

/// A deserializer that hands its visitors maps only.
struct MapsOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapsOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let sequences = !self.0.is_human_readable();
        self.0.deserialize_map(MapVisitor { visitor, sequences })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let sequences = !self.0.is_human_readable();
        self.0
            .deserialize_struct(name, fields, MapVisitor { visitor, sequences })
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// `visitor`, refusing anything but a map (default `visit_*`: invalid
/// type) — or a sequence, where `sequences` says that is how the format
/// gives structs.
struct MapVisitor<V> {
    visitor: V,
    sequences: bool,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if !self.sequences {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        self.visitor.visit_seq(seq)
    }
}

/// For `#[serde(deserialize_with = "...")]` on a required struct field.
pub(crate) fn required<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    ObjectOnly::deserialize(deserializer).map(|o| o.0)
}

/// For `#[serde(default, deserialize_with = "...")]` on an optional struct
/// field: absent or `null` is `None`.
pub(crate) fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<ObjectOnly<T>>::deserialize(deserializer).map(|o| o.map(|o| o.0))
}

/// For a field holding a list of structs.
pub(crate) fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Vec::<ObjectOnly<T>>::deserialize(deserializer)
        .map(|items| items.into_iter().map(|o| o.0).collect())
}
