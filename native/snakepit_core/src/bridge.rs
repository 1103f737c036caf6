//! BEAM-free parts of the bridge server that Python workers call back into:
//! where it listens, how long a call may wait for Elixir, and how a tool
//! call's arguments are checked before anything reaches the BEAM.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::json::Parsed;

/// Longest Unix socket path the kernel accepts (`sun_path` minus the NUL).
pub const UNIX_PATH_MAX: usize = 107;

/// Where the bridge listens, parsed from the address Elixir gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `unix:/abs/path.sock`
    Unix(PathBuf),
    /// `host:port` (port 0 picks a free one); only loopback hosts.
    Tcp(String),
}

/// Parses `unix:/path` or `host:port`; the host must be a loopback address
/// unless `any_host` (the operator's explicit `allow_non_loopback_bind`).
pub fn parse_address(address: &str, any_host: bool) -> Result<Listen, String> {
    if let Some(path) = address.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(format!(
                "bridge address {address:?} has an empty socket path"
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("bridge socket path {path:?} must be absolute"));
        }
        if path.len() > UNIX_PATH_MAX {
            return Err(format!(
                "bridge socket path {path:?} is longer than {UNIX_PATH_MAX} bytes"
            ));
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("bridge address {address:?} is neither unix:/path nor host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("bridge address {address:?} has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !loopback && !any_host {
        return Err(format!(
            "bridge address {address:?} is not a loopback address; the bridge is local only"
        ));
    }
    Ok(Listen::Tcp(address.to_string()))
}

/// A Unix socket file the bridge created. Removing it later only removes
/// the very file it bound (same device and inode), so a successor that
/// re-bound the same path keeps its socket.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it is still the one this value describes.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening Unix socket at `path` with mode 0600, replacing a stale
/// socket file left there (never any other kind of file).
pub fn bind_unix(path: &Path) -> io::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

/// Binds a loopback TCP listener; returns it with the bound `host:port`.
pub fn bind_tcp(address: &str) -> io::Result<(std::net::TcpListener, String)> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?.to_string();
    Ok((listener, bound))
}

/// Extra time the server gives Elixir past a call's own budget before it
/// answers the call itself: Elixir enforces the budget and normally answers
/// first, with a structured timeout.
pub const REPLY_SLACK: Duration = Duration::from_millis(2_000);

/// How long a call waits for Elixir's answer: the caller's budget (when it
/// gave one) or the server's default, plus [`REPLY_SLACK`].
pub fn reply_wait(timeout_ms: i64, default: Duration) -> Duration {
    let budget = if timeout_ms > 0 {
        Duration::from_millis(timeout_ms as u64)
    } else {
        default
    };
    budget + REPLY_SLACK
}

/// Decodes a tool call's `args_json` under the configured limits: empty or
/// `null` means no arguments, anything but a JSON object is refused.
/// Invalid UTF-8 is refused too. The result is an object.
pub fn decode_args(bytes: &[u8]) -> Result<Parsed, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Parsed::new(Value::Object(Map::new()), 1));
    }
    match crate::json::parse(bytes) {
        Ok(args) if args.is_object() => Ok(args),
        Ok(args) if args.is_null() => Ok(Parsed::new(Value::Object(Map::new()), 1)),
        Ok(other) => Err(format!(
            "arguments must be a JSON object, got {}",
            kind_of(&other)
        )),
        Err(e) if e.is_limit() => Err(format!("the arguments cannot be read: {e}")),
        Err(e) => Err(format!("arguments are not valid JSON: {e}")),
    }
}

/// Decodes a JSON document that may be empty (empty means `{}`), under the
/// configured limits.
pub fn decode_optional(bytes: &[u8]) -> Result<Parsed, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Parsed::new(Value::Object(Map::new()), 1));
    }
    crate::json::parse(bytes).map_err(|e| match e {
        crate::json::Error::Limit(msg) => msg,
        crate::json::Error::Syntax(msg) => format!("not valid JSON: {msg}"),
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_refuse_what_is_not_local() {
        assert_eq!(
            parse_address("unix:/tmp/x.sock", false).unwrap(),
            Listen::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            parse_address("unix:///tmp/x.sock", false).unwrap(),
            Listen::Unix("/tmp/x.sock".into())
        );
        assert!(parse_address("unix:", false).is_err());
        assert!(parse_address("unix:relative.sock", false).is_err());
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        assert!(parse_address(&long, false).unwrap_err().contains("longer"));
        assert_eq!(
            parse_address("127.0.0.1:0", false).unwrap(),
            Listen::Tcp("127.0.0.1:0".into())
        );
        assert!(parse_address("[::1]:0", false).is_ok());
        assert!(parse_address("localhost:5000", false).is_ok());
        assert!(parse_address("0.0.0.0:0", false)
            .unwrap_err()
            .contains("loopback"));
        assert!(parse_address("10.1.2.3:80", false).is_err());
        assert!(parse_address("127.0.0.1:notaport", false).is_err());
        assert!(parse_address("nonsense", false).is_err());
        assert!(parse_address("0.0.0.0:0", true).is_ok());
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-core-bridge-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn unix_socket_is_private_replaces_stale_sockets_and_spares_successors() {
        let dir = tmp_dir("unix");
        let path = dir.join("bridge.sock");

        let (first, first_file) = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // A successor binds the same path while the first still exists.
        let (_second, second_file) = bind_unix(&path).unwrap();
        drop(first);
        // The first one's cleanup must not remove the successor's socket.
        first_file.remove();
        assert!(path.exists());
        second_file.remove();
        assert!(!path.exists());

        // Anything that is not a socket is never replaced.
        std::fs::write(&path, b"data").unwrap();
        assert!(bind_unix(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcp_binds_a_free_loopback_port() {
        let (_l, bound) = bind_tcp("127.0.0.1:0").unwrap();
        assert!(bound.starts_with("127.0.0.1:"));
        assert_ne!(bound, "127.0.0.1:0");
    }

    #[test]
    fn reply_wait_uses_the_budget_or_the_default() {
        let d = Duration::from_secs(30);
        assert_eq!(reply_wait(0, d), d + REPLY_SLACK);
        assert_eq!(reply_wait(-5, d), d + REPLY_SLACK);
        assert_eq!(reply_wait(250, d), Duration::from_millis(250) + REPLY_SLACK);
    }

    #[test]
    fn args_must_be_a_json_object() {
        assert!(decode_args(b"").unwrap().as_object().unwrap().is_empty());
        assert!(decode_args(b"  ").unwrap().as_object().unwrap().is_empty());
        assert!(decode_args(b"null")
            .unwrap()
            .as_object()
            .unwrap()
            .is_empty());
        let map = decode_args(br#"{"n": 9007199254740993, "f": 1.5}"#).unwrap();
        assert!(map["n"].is_i64());
        assert!(map["f"].is_f64());
        assert!(decode_args(b"[1,2]").unwrap_err().contains("an array"));
        assert!(decode_args(b"{\"a\": ")
            .unwrap_err()
            .contains("not valid JSON"));
        // Invalid UTF-8 inside a string is refused, not passed on.
        assert!(decode_args(b"{\"a\": \"\xff\"}").is_err());
    }

    #[test]
    fn optional_documents_default_to_an_empty_object() {
        assert_eq!(*decode_optional(b"").unwrap(), Value::Object(Map::new()));
        assert_eq!(*decode_optional(b"[1]").unwrap(), serde_json::json!([1]));
        assert!(decode_optional(b"{").is_err());
    }
}
