//! RFC 3501 §5.1.3 modified UTF-7 for mailbox names.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Encode a UTF-8 name to modified UTF-7.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        let mut bits = 0u32;
        let mut n = 0;
        for b in bytes {
            bits = (bits << 8) | u32::from(b);
            n += 8;
            while n >= 6 {
                n -= 6;
                out.push(B64[((bits >> n) & 63) as usize] as char);
            }
        }
        if n > 0 {
            out.push(B64[((bits << (6 - n)) & 63) as usize] as char);
        }
        out.push('-');
        pending.clear();
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decode modified UTF-7 to UTF-8. Non-ASCII input (clients that send raw
/// UTF-8) is passed through. `None` if a shifted sequence is malformed.
pub fn decode(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.char_indices();
    while let Some((_, c)) = it.next() {
        if c != '&' {
            out.push(c);
            continue;
        }
        let mut units = Vec::new();
        let mut bits = 0u32;
        let mut n = 0;
        let mut empty = true;
        loop {
            let (_, c) = it.next()?;
            if c == '-' {
                break;
            }
            empty = false;
            let v = B64.iter().position(|&b| b as char == c)? as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 16 {
                n -= 16;
                units.push(((bits >> n) & 0xffff) as u16);
            }
        }
        if empty {
            out.push('&');
        } else {
            if n >= 6 || (bits & ((1 << n) - 1)) != 0 {
                return None;
            }
            out.push_str(&String::from_utf16(&units).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        for s in ["INBOX", "a&b", "Entwürfe", "日本語/テスト", "x~y"] {
            assert_eq!(super::decode(&super::encode(s)).as_deref(), Some(s));
        }
        assert_eq!(super::encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(super::decode("&Jjo-!").as_deref(), Some("☺!"));
        assert!(super::decode("&Jjo").is_none());
        assert!(super::decode("&*-").is_none());
    }
}
