//! The per-VM secret that every call between the VM and its workers
//! carries, in both directions, so that a port Snakepit opens answers only
//! to the processes it started.
//!
//! The secret comes from the kernel's CSPRNG (`getrandom(2)`), lives only
//! in this library's memory and in the environment of the processes it
//! spawns (`SNAKEPIT_AUTH_TOKEN`, readable by their owner alone), and is
//! compared in constant time.

use std::io;
use std::sync::OnceLock;

/// Environment variable that hands the secret to workers.
pub const ENV_VAR: &str = "SNAKEPIT_AUTH_TOKEN";
/// gRPC metadata key (HTTP/2 header) that carries it on every call.
pub const HEADER: &str = "x-snakepit-auth";

const SECRET_BYTES: usize = 32;

/// `n` bytes from the kernel's CSPRNG.
pub fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    crate::sys::getrandom(&mut buf)?;
    Ok(buf)
}

/// A new secret: 32 random bytes as 64 lowercase hex digits (a valid
/// header value and environment value).
pub fn generate() -> io::Result<String> {
    Ok(random_bytes(SECRET_BYTES)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// This VM's secret, made on first use. Panics only if the kernel cannot
/// give random bytes at all, which leaves nothing safe to do.
pub fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| generate().expect("getrandom failed: no secret can be made"))
}

/// Does `candidate` equal `secret`? Constant time in the contents (the
/// length, which is public, may show).
pub fn equal(candidate: &[u8], secret: &[u8]) -> bool {
    if candidate.len() != secret.len() {
        return false;
    }
    let diff = candidate
        .iter()
        .zip(secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    // Read the accumulator through a volatile load so the comparison is not
    // turned into an early-exit loop.
    // SAFETY: `diff` is a live local.
    unsafe { std::ptr::read_volatile(&diff) == 0 }
}

/// Does `candidate` carry this VM's secret?
pub fn is_valid(candidate: &[u8]) -> bool {
    equal(candidate, token().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_hex_of_the_right_length() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_token_is_stable_within_a_process() {
        assert_eq!(token(), token());
        assert!(is_valid(token().as_bytes()));
    }

    #[test]
    fn comparison_rejects_wrong_empty_and_prefix_candidates() {
        let secret = b"0123456789abcdef";
        assert!(equal(b"0123456789abcdef", secret));
        assert!(!equal(b"0123456789abcdeF", secret));
        assert!(!equal(b"", secret));
        assert!(!equal(b"0123456789abcde", secret));
        assert!(!equal(b"0123456789abcdef0", secret));
    }
}
