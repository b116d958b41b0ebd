//! Any text: `json_text` (the reader hub frames are decoded with) never
//! panics and accepts exactly what serde_json accepts, as a payload (raw
//! text) and read into types (strings, integers, lists, maps, null).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use promhub_core::json_text;
use serde_json::value::RawValue;

type Typed = Option<Vec<BTreeMap<String, Option<(u64, i64, String, bool)>>>>;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ours = json_text::payload(&text).map(|p| p.get().to_owned());
    let reference = RawValue::from_string(text.to_string()).map(|p| p.get().trim().to_owned());
    match (&ours, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("payload {text:?}: json_text {ours:?}, serde_json {reference:?}"),
    }
    let ours = json_text::from_str::<Typed>(&text);
    let reference = serde_json::from_str::<Typed>(&text);
    match (&ours, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("typed {text:?}: json_text {ours:?}, serde_json {reference:?}"),
    }
});
