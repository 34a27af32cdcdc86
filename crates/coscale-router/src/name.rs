//! Model names as clients write them: one percent-encoded URL path segment or a header value.
//!
//! Allowed after decoding: `[A-Za-z0-9._-]`, not empty, not `.` or `..` (v2-protocol.md §1.10).

use crate::error::RouteError;

/// Checks a decoded model name against the V2 name rules.
pub fn validate_model_name(name: &str) -> Result<(), RouteError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name == "." || name == ".." || !name.bytes().all(allowed) {
        return Err(RouteError::InvalidModelName(name.to_owned()));
    }
    Ok(())
}

/// Percent-decodes one path segment and validates it as a model name.
///
/// Borrows when the segment holds no escapes (the common case), so the hot path does not allocate.
pub fn decode_model_segment(segment: &str) -> Result<std::borrow::Cow<'_, str>, RouteError> {
    let decoded = if segment.contains('%') {
        std::borrow::Cow::Owned(percent_decode(segment)?)
    } else {
        std::borrow::Cow::Borrowed(segment)
    };
    validate_model_name(&decoded)?;
    Ok(decoded)
}

fn percent_decode(segment: &str) -> Result<String, RouteError> {
    let invalid = || RouteError::InvalidModelName(segment.to_owned());
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(invalid)?;
            let hex = std::str::from_utf8(hex).map_err(|_| invalid())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_with_dots_underscores_and_dashes_are_accepted() {
        for name in ["iris", "my.model_x", "a-b", "m_1", "..."] {
            assert_eq!(decode_model_segment(name).unwrap(), name);
        }
    }

    #[test]
    fn percent_encoded_segments_are_decoded_before_validation() {
        assert_eq!(decode_model_segment("my%2Emodel_x").unwrap(), "my.model_x");
    }

    #[test]
    fn slashes_spaces_dot_segments_and_empty_names_are_rejected() {
        for name in [
            "",
            ".",
            "..",
            "a%2Fb",
            "x%20y",
            "bad%",
            "bad%zz",
            "caf%C3%A9",
            "%FF",
        ] {
            assert!(
                matches!(
                    decode_model_segment(name),
                    Err(RouteError::InvalidModelName(_))
                ),
                "{name:?} should be rejected"
            );
        }
    }
}
