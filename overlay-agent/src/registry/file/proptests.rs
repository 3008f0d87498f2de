//! Property tests of the file registry's reading of a record file (issue 14 §4): any
//! content of `<node>.json` gives a record of that node or a malformed entry naming the
//! file, never a panic, in bounded time.

use super::{read_record, Entry};
use crate::record::proptests::any_record;
use crate::record::VtepRecord;
use proptest::prelude::*;
use twill_conf::strategies::{bounded, config, raw_bytes};

fn any_content() -> impl Strategy<Value = (String, Vec<u8>)> {
    any_record().prop_flat_map(|r| {
        let name = if r.node.is_empty() || r.node.contains(['/', '\0']) || r.node.len() > 200 {
            "node-1".to_string()
        } else {
            r.node.clone()
        };
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        (
            Just(name),
            prop_oneof![Just(bytes.clone()), raw_bytes(bytes)],
        )
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_file_is_its_node_record_or_malformed((stem, bytes) in any_content()) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let file_name = format!("{stem}.json");
        let path = dir.path().join(&file_name);
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = VtepRecord::from_json(&bytes);
        match bounded("read_record", || read_record(&path, &file_name)) {
            Entry::Record(r) => {
                prop_assert_eq!(&r.node, &stem);
                prop_assert_eq!(Some(*r), decoded.ok());
            }
            Entry::Malformed(m) => {
                prop_assert_eq!(m.source, file_name);
                if let Err(e) = decoded {
                    prop_assert_eq!(m.reason, e.to_string());
                }
            }
            Entry::Ignored => prop_assert!(stem.starts_with('.'), "{file_name} ignored"),
        }
    }
}
