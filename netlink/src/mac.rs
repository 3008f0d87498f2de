//! MAC addresses as Twill writes and reads them: `aa:bb:cc:dd:ee:ff`.

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Six colon-separated pairs of hex digits, nothing else.
pub fn parse(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in out.iter_mut() {
        // from_str_radix alone would take "+a" as 0x0a.
        let p = parts
            .next()
            .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))?;
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(out),
    }
}

/// A link-layer address that is a MAC; `None` for other lengths (non-Ethernet links).
pub(crate) fn from_bytes(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lower_case_and_parses_back() {
        let m = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00];
        assert_eq!(format(&m), "0a:58:0a:f4:01:00");
        assert_eq!(parse(&format(&m)), Some(m));
        assert_eq!(parse("0A:58:0A:F4:01:00"), Some(m));
    }

    #[test]
    fn parses_six_pairs_of_hex_digits_only() {
        let bad = [
            "0a-58-0a-f4-01-00",
            "0a:58:0a:f4:1:000",
            "0a:58:0a:f4:01:",
            "0a:58",
            "+a:58:0a:f4:01:00",
        ];
        assert!(bad.iter().all(|s| parse(s).is_none()));
    }
}
