//! `xtext` (RFC 3461 §4), used by `ENVID`, `ORCPT` and `AUTH=`.

/// Decodes `xtext` into bytes.
///
/// ```abnf
/// ; RFC 3461 §4
/// xtext   = *( xchar / hexchar )
/// xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
///           except for "+" and "="
/// hexchar = ASCII "+" immediately followed by two upper case
///           hexadecimal digits
/// ```
///
/// Lenient in two documented ways: lower-case hex digits are accepted after `+`, and non-ASCII
/// UTF-8 passes through unchanged (RFC 6531 allows UTF-8 in `esmtp-value`). Returns `None` for
/// `=`, a control character, SP, or a `+` not followed by two hex digits.
pub fn decode(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'=' => return None,
            b @ 33..=126 => {
                out.push(b);
                i += 1;
            }
            b if b >= 0x80 => {
                // `input` is a `str`, so this is part of a valid UTF-8 sequence.
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Encodes bytes as canonical `xtext` (upper-case hex, every octet outside `xchar` as `+HH`).
pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_table() {
        let table: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("abc", Some(b"abc")),
            ("a+2Bb", Some(b"a+b")),
            ("a+2bb", Some(b"a+b")),
            ("+3D", Some(b"=")),
            ("user+40example.com", Some(b"user@example.com")),
            ("+20", Some(b" ")),
            ("+", None),
            ("+4", None),
            ("+4G", None),
            ("a=b", None),
            ("a b", None),
            ("a\tb", None),
            ("é", Some("é".as_bytes())),
        ];
        for (input, expected) in table {
            assert_eq!(decode(input).as_deref(), *expected, "{input:?}");
        }
    }

    #[test]
    fn encode_round_trip() {
        for raw in [&b"plain"[..], b"a+b=c d", b"\x00\xff", "é".as_bytes()] {
            let enc = encode(raw);
            assert_eq!(decode(&enc).as_deref(), Some(raw));
        }
        assert_eq!(encode(b"a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
