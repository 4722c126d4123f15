//! The endpoint-list parser (endpoints files that another tool writes, and
//! `PUT /clusters/{name}/endpoints` bodies) on arbitrary text: never
//! panics, and every error has a position.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(errors) = ringmesh_control::model::parse_endpoint_list("fuzz.yaml", &text) {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(e.line >= 1 && e.column >= 1);
        }
    }
});
