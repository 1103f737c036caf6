//! The pure parts of gRPC over HTTP/2 that the lean `ExecuteTool` path
//! writes by hand: the 5-byte message prefix and the `grpc-timeout` header.

use std::time::Duration;

/// The prefix of one uncompressed message of `len` bytes: a zero flag
/// byte, then the length, big-endian.
pub fn prefix(len: usize) -> [u8; 5] {
    let n = (len as u32).to_be_bytes();
    [0, n[0], n[1], n[2], n[3]]
}

/// The one length-prefixed, uncompressed message in `data` (a unary body).
pub fn message(data: &[u8]) -> Result<&[u8], String> {
    if data.len() < 5 {
        return Err("no message".into());
    }
    if data[0] != 0 {
        return Err("compressed message".into());
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() != 5 + len {
        return Err("length prefix does not match".into());
    }
    Ok(&data[5..])
}

/// A `grpc-timeout` value: at most 8 digits, so long budgets go in coarser
/// units (milliseconds, then seconds, then minutes), never below 1 ms.
pub fn timeout(t: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let ms = t.as_millis().max(1);
    if ms <= MAX {
        format!("{ms}m")
    } else if ms / 1000 <= MAX {
        format!("{}S", ms / 1000)
    } else {
        format!("{}M", (ms / 60_000).min(MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefixed_message_reads_back() {
        let mut body = prefix(3).to_vec();
        body.extend_from_slice(b"abc");
        assert_eq!(message(&body).unwrap(), b"abc");
        assert_eq!(prefix(0x0102_0304), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn malformed_bodies_are_named() {
        assert_eq!(message(b"").unwrap_err(), "no message");
        assert_eq!(message(&[1, 0, 0, 0, 0]).unwrap_err(), "compressed message");
        assert_eq!(
            message(&[0, 0, 0, 0, 2, 9]).unwrap_err(),
            "length prefix does not match"
        );
        assert_eq!(message(&[0, 0, 0, 0, 0]).unwrap(), b"");
    }

    #[test]
    fn timeouts_fit_eight_digits() {
        assert_eq!(timeout(Duration::from_micros(10)), "1m");
        assert_eq!(timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(timeout(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(timeout(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(timeout(Duration::from_secs(200_000_000)), "3333333M");
        assert_eq!(timeout(Duration::from_secs(u64::MAX / 2)), "99999999M");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn a_body_is_one_whole_message_or_refused(body in prop::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(m) = message(&body) {
                    prop_assert_eq!(body[0], 0);
                    prop_assert_eq!(m.len() + 5, body.len());
                }
            }

            #[test]
            fn prefixed_messages_read_back_and_cuts_are_refused(msg in prop::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
                let mut body = prefix(msg.len()).to_vec();
                body.extend_from_slice(&msg);
                prop_assert_eq!(message(&body).unwrap(), &msg[..]);
                let cut = cut.index(body.len());
                prop_assert!(message(&body[..cut]).is_err());
            }

            #[test]
            fn oversized_lengths_are_refused(len in 1u32.., rest in prop::collection::vec(any::<u8>(), 0..64)) {
                prop_assume!(len as usize != rest.len());
                let mut body = prefix(len as usize).to_vec();
                body.extend_from_slice(&rest);
                prop_assert!(message(&body).is_err());
            }
        }
    }
}
