//! Connected pairs of unix sockets, and the check of an end received from a
//! peer: what `Bell` (stream) and `Channel` (seqpacket) are made of.

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// A connected, non-blocking, close-on-exec pair of unix sockets.
pub(super) fn pair(kind: SocketType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        kind,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Checks that `fd` is a unix socket of type `kind` (`what` names the type
/// in the refusal: "stream", "seqpacket").
pub(super) fn check_unix(fd: &OwnedFd, kind: SocketType, what: &str) -> Result<(), String> {
    let st = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err("not a socket".into());
    }
    let domain = rustix::net::sockopt::socket_domain(fd)
        .map_err(|e| format!("getsockopt(SO_DOMAIN): {e}"))?;
    let got =
        rustix::net::sockopt::socket_type(fd).map_err(|e| format!("getsockopt(SO_TYPE): {e}"))?;
    if domain != AddressFamily::UNIX || got != kind {
        return Err(format!(
            "a socket of domain {domain:?} and type {got:?}, not a unix {what} socket"
        ));
    }
    Ok(())
}
