//! The upgrade socket's wire: one JSON object per line, blocking, with deadlines. The
//! listening sockets travel as `SCM_RIGHTS` on the offer line (rustix `sendmsg` /
//! `recvmsg`), in the order the offer lists them.
//!
//! ```text
//! new → old   {"protocol":"switchyard-upgrade/1","pid":N}
//! old → new   {"offer":{"pid":M,"sockets":[{"key":"proxy_service.web_listen_addr","addr":"…"},…]}}  + fds
//!             or {"refused":"why"}
//! new → old   {"ready":N}        (the new process accepts on every socket)
//! ```
//!
//! `switchyard upgrade` asks instead of saying hello: `{"protocol":…,"query":"status"}`,
//! answered `{"serving":M,"starting":true|false,"started":K}` (a successor is starting;
//! `SIGUSR2` started K).
//!
//! Each side sends one line and waits for the other's, so a reader never reads past the
//! line it waits for.

use super::UpgradeError;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The protocol name and version in the first line.
pub(crate) const PROTOCOL: &str = "switchyard-upgrade/1";
/// Most sockets one offer carries (the single port, the legacy listeners, diagnostics,
/// the upgrade socket: far fewer in practice).
pub(crate) const MAX_SOCKETS: usize = 32;
/// Longest line either side accepts.
const MAX_LINE: usize = 64 * 1024;

/// The new process's first line.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hello {
    pub(crate) protocol: String,
    pub(crate) pid: u32,
}

/// One listening socket of an offer: which configuration key it serves, and its address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Socket {
    pub(crate) key: String,
    pub(crate) addr: String,
}

/// What the running process answers to a hello.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Answer {
    Offer { pid: u32, sockets: Vec<Socket> },
    Refused(String),
}

/// `switchyard upgrade`'s question, in place of a hello.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Query {
    pub(crate) protocol: String,
    pub(crate) query: String,
}

/// The answer to a [`Query`]: who serves, whether a successor is starting, and how many
/// `SIGUSR2` started.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Status {
    pub(crate) serving: u32,
    pub(crate) starting: bool,
    pub(crate) started: u64,
}

/// The new process's last line: it serves every socket it was given.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ready {
    pub(crate) ready: u32,
}

/// Parses one line as `T`; anything else is a protocol error naming what was expected.
pub(crate) fn parse<'a, T: Deserialize<'a>>(line: &'a [u8], what: &str) -> Result<T, UpgradeError> {
    serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        UpgradeError::Protocol(format!("expected {what}, got {shown:?} ({e})"))
    })
}

/// Sends `message` as one line, with `fds` attached.
pub(crate) fn send(
    stream: &UnixStream,
    message: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> Result<(), UpgradeError> {
    let mut line = serde_json::to_vec(message).expect("messages serialize");
    line.push(b'\n');
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets to pass, at most {MAX_SOCKETS}",
            fds.len()
        )));
    }
    let mut sent = sendmsg(
        stream,
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| UpgradeError::Io(e.into()))?;
    while sent < line.len() {
        let mut none = SendAncillaryBuffer::default();
        sent += sendmsg(
            stream,
            &[IoSlice::new(&line[sent..])],
            &mut none,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| UpgradeError::Io(e.into()))?;
    }
    Ok(())
}

/// Reads one line (without its newline) and the descriptors that came with it. The
/// stream's read timeout is the deadline.
pub(crate) fn recv(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), UpgradeError> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            stream.as_fd(),
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| UpgradeError::Io(e.into()))?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return Err(UpgradeError::Closed);
        }
        line.extend_from_slice(&buf[..got.bytes]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok((line, fds));
        }
        if line.len() > MAX_LINE {
            return Err(UpgradeError::Protocol(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_offer_carries_its_sockets_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = [&l1, &l2].map(|l| Socket {
            key: "k".into(),
            addr: l.local_addr().unwrap().to_string(),
        });
        let offer = Answer::Offer {
            pid: 7,
            sockets: sockets.to_vec(),
        };
        send(&a, &offer, &[l1.as_fd(), l2.as_fd()]).unwrap();
        let (line, fds) = recv(&b).unwrap();
        assert_eq!(parse::<Answer>(&line, "an offer").unwrap(), offer);
        let got: Vec<_> = fds
            .into_iter()
            .map(|fd| std::net::TcpListener::from(fd).local_addr().unwrap())
            .collect();
        assert_eq!(got, [l1.local_addr().unwrap(), l2.local_addr().unwrap()]);
    }

    #[test]
    fn a_line_split_over_writes_is_one_line() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"{\"protocol\":\"switchyard-upgrade/1\",")
            .unwrap();
        let writer = std::thread::spawn(move || a.write_all(b"\"pid\":42}\n").unwrap());
        let (line, fds) = recv(&b).unwrap();
        writer.join().unwrap();
        assert!(fds.is_empty());
        let hello: Hello = parse(&line, "a hello").unwrap();
        assert_eq!(hello.pid, 42);
    }

    #[test]
    fn garbage_is_a_protocol_error_naming_what_was_expected() {
        let e = parse::<Hello>(b"GET / HTTP/1.1", "a hello").unwrap_err();
        assert!(e.to_string().contains("expected a hello"), "{e}");
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv(&b), Err(UpgradeError::Closed)));
    }
}
