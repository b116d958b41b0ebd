//! Any text sent by a client: decoding never panics, and whatever decodes
//! re-encodes to a frame that decodes again to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promhub_core::ClientFrame;
use promhub_core::frames::DecodeErrorKind;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match ClientFrame::decode(&text) {
        Ok(frame) => {
            let encoded = frame.encode();
            let again = ClientFrame::decode(&encoded)
                .unwrap_or_else(|e| panic!("re-encoded frame {encoded} does not decode: {e}"));
            assert_eq!(again.encode(), encoded, "encoding is not stable");
        }
        Err(e) => {
            if e.kind == DecodeErrorKind::Malformed {
                assert_eq!(e.rid, None, "a malformed frame has no readable rid");
            }
            assert!(!e.to_error_frame().msg.is_empty());
        }
    }
});
