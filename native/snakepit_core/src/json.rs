//! JSON parsing of worker replies. Integers stay integers (i64/u64).

use serde_json::Value;

/// Parses JSON bytes. Empty input is `null`.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_integers_integers() {
        let v = parse(br#"{"a": 1, "b": 1.5, "c": 18446744073709551615}"#).unwrap();
        assert!(v["a"].is_i64());
        assert!(v["b"].is_f64());
        assert!(v["c"].is_u64());
    }

    #[test]
    fn parse_empty_is_null_and_garbage_is_an_error() {
        assert_eq!(parse(b"").unwrap(), Value::Null);
        assert!(parse(b"{not json").is_err());
    }
}
