//! Hostile inputs for the property tests of every parser that takes outside input
//! (issue 14 §4): valid-looking JSON with one field mutated, wrong types, out-of-range
//! numbers, bad CIDRs, huge and unicode strings, duplicate keys, and raw bytes.
//!
//! Shared by the crates' `proptests` modules through the `strategies` feature, which
//! only their dev-dependencies turn on. `PROPTEST_CASES` sets the number of cases
//! (`make fuzz` raises it).

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{Map, Number, Value};
use std::time::{Duration, Instant};

/// The longest one parse of one input may take, even in a debug build on a loaded
/// machine; the inputs are at most a few hundred KB.
pub const INPUT_BOUND: Duration = Duration::from_secs(2);

/// The runner's configuration: `PROPTEST_CASES` or 256 cases; a failure is printed
/// (shrunk) rather than saved beside the sources, since each one becomes a named test.
pub fn config() -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Any IPv4 or IPv6 network, host bits cleared.
pub fn any_net() -> impl Strategy<Value = ipnet::IpNet> {
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a.into(), l).unwrap_or_default())),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a.into(), l).unwrap_or_default())),
    ]
}

/// Runs one parse and fails when it takes longer than [`INPUT_BOUND`].
pub fn bounded<T>(what: &str, parse: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = parse();
    let took = start.elapsed();
    assert!(took < INPUT_BOUND, "{what} took {took:?} for one input");
    out
}

/// Strings a parser of addresses, names and paths should meet: empty, near-misses of
/// CIDRs and addresses, separators, unicode, control characters and huge ones.
pub fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "10.244.1.0/24",
            "10.244.1.5/24",
            "10.244.1.0/33",
            "10.244.1.0/-1",
            "10.244.1.0/",
            "/24",
            "10.244.1/24",
            "256.0.0.0/8",
            "0.0.0.0/0",
            "::/0",
            "fd00::/129",
            "fd00::/64",
            "fd00:10:244:1::/64",
            "::ffff:10.0.0.1",
            "10.0.0.1",
            "10.0.0.1%eth0",
            "1.2.3.4 ",
            " 1.2.3.4",
            "0a:58:0a:f4:01:00",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "0a:58:0a:f4:01",
            "0A-58-0A-F4-01-00",
            "twill0",
            "eth0",
            "a/b",
            "/",
            "//",
            "/run/twill/",
            "auto",
            "never",
            "..",
            ".",
            "\0",
            "tw\u{200b}0",
            "ünïcødé",
            "1.0.0",
            "1.1.0",
            "99999999999999999999",
            "-1",
        ])
        .prop_map(str::to_string),
        any::<String>(),
        "[0-9a-f:./%-]{0,48}",
        // Paths and key prefixes: roots, doubled and trailing slashes, dots.
        "/{0,2}([a-z.]{0,3}/{0,2}){0,3}",
        // Huge: far beyond any field's limit.
        (prop::char::any(), 1_000usize..100_000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// Numbers at and beyond the edges of u32, negative and fractional ones.
pub fn hostile_number() -> BoxedStrategy<Value> {
    prop_oneof![
        prop::sample::select(vec![
            0i64,
            -1,
            1,
            67,
            68,
            1450,
            65535,
            65536,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::MIN,
            i64::MAX,
        ])
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(serde_json::json!(1.5)),
        Just(serde_json::json!(1e300)),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels, with hostile leaves.
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_number(),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{0,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// One change to one key of an object.
#[derive(Debug, Clone)]
pub enum Mutation {
    Remove,
    Set(Value),
}

/// `base` with one of `keys` removed or set to a hostile value; returns the key.
pub fn mutate_one_key(
    base: Map<String, Value>,
    keys: &'static [&'static str],
) -> impl Strategy<Value = (Map<String, Value>, &'static str)> {
    // Strings and numbers directly as well: nested in any JSON they are rare.
    let mutation = prop_oneof![
        1 => Just(Mutation::Remove),
        4 => json_value().prop_map(Mutation::Set),
        4 => hostile_string().prop_map(|s| Mutation::Set(Value::String(s))),
        2 => hostile_number().prop_map(Mutation::Set),
    ];
    (prop::sample::select(keys), mutation).prop_map(move |(key, m)| {
        let mut map = base.clone();
        match m {
            Mutation::Remove => {
                map.remove(key);
            }
            Mutation::Set(v) => {
                map.insert(key.to_string(), v);
            }
        }
        (map, key)
    })
}

/// The JSON text of `map` with `key` written twice, the second time as `second`: what a
/// hand-edited file may hold, and what `serde_json::Value` silently resolves.
pub fn with_duplicate_key(map: &Map<String, Value>, key: &str, second: &Value) -> String {
    let mut text = Value::Object(map.clone()).to_string();
    text.pop();
    let sep = if map.is_empty() { "" } else { "," };
    format!("{text}{sep}{}:{second}}}", Value::from(key))
}

/// Raw bytes: random ones, deeply nested JSON, and `doc` truncated or with bytes flipped
/// or inserted.
pub fn raw_bytes(doc: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = doc.len().max(1);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Past serde_json's recursion limit: an error, not a stack overflow.
        (
            prop::sample::select(vec!["[", "{\"a\":", "[{\"b\":["]),
            1usize..100_000
        )
            .prop_map(|(open, n)| open.repeat(n).into_bytes()),
        (0..len).prop_map({
            let doc = doc.clone();
            move |n| doc[..n.min(doc.len())].to_vec()
        }),
        prop::collection::vec((0..len, any::<u8>(), any::<bool>()), 1..8).prop_map(move |edits| {
            let mut out = doc.clone();
            for (at, byte, insert) in edits {
                let at = at.min(out.len());
                if insert || at == out.len() {
                    out.insert(at, byte);
                } else {
                    out[at] = byte;
                }
            }
            out
        }),
    ]
    .boxed()
}
