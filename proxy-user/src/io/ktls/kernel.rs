//! The kernel's side of kTLS, as system calls: `TCP_ULP tls` and the keys for
//! `TLS_TX`/`TLS_RX` from rustls' extracted secrets ([`install`]), the control record a
//! kTLS socket holds back from `splice(2)` ([`read_control`]), a `close_notify` sent on
//! one ([`send_close_notify`]), and the start-up [`probe`] of which ciphers the kernel
//! takes. Socket options and the record type of a read through `nix`'s safe wrappers;
//! the record type of a send has none, so that one `sendmsg` is `libc`.

use std::io::{self, IoSliceMut};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::socket::sockopt::{TcpTlsRx, TcpTlsTx, TcpUlp, TlsCryptoInfo};
use nix::sys::socket::{recvmsg, setsockopt, ControlMessageOwned, MsgFlags, TlsGetRecordType};
use rustls::{CipherSuite, ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};

use super::HandOverError;

/// The kernel's ciphers, as rustls' suites map onto them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    const ALL: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    /// The kernel cipher of a negotiated suite; `None` for one it has no cipher for.
    pub(crate) fn of(suite: SupportedCipherSuite) -> Option<Cipher> {
        use CipherSuite as S;
        Some(match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Cipher::Aes128Gcm,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Cipher::Aes256Gcm,
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Cipher::Chacha20Poly1305,
            _ => return None,
        })
    }

    /// Zero keys of this cipher, for the probe.
    fn sample(self) -> TlsCryptoInfo {
        let info = |cipher_type| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        };
        match self {
            Cipher::Aes128Gcm => TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv: [0; 8],
                key: [0; 16],
                salt: [0; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Aes256Gcm => TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv: [0; 8],
                key: [0; 32],
                salt: [0; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Chacha20Poly1305 => {
                TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: [0; 12],
                    key: [0; 32],
                    salt: [],
                    rec_seq: [0; 8],
                })
            }
        }
    }
}

/// The ciphers the kernel took in [`probe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offered([bool; 3]);

impl Offered {
    pub(crate) fn takes(&self, cipher: Cipher) -> bool {
        self.0[cipher as usize]
    }

    /// The ciphers taken, for the start-up line.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let names = ["AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"];
        (0..3).filter(|&i| self.0[i]).map(|i| names[i]).collect()
    }
}

/// Which ciphers this kernel's TLS takes: a loopback connection per cipher, `TCP_ULP tls`
/// on it and zero keys for `TLS_TX`. `Err` when there is no TLS ULP at all (a kernel
/// without `CONFIG_TLS`, or without the `tls` module).
pub(crate) fn probe() -> io::Result<Offered> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut offered = Offered::default();
    for cipher in Cipher::ALL {
        let socket = TcpStream::connect(addr)?;
        let _accepted = listener.accept()?;
        setsockopt(&socket, TcpUlp::default(), b"tls").map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("TCP_ULP tls: {e} (no kernel TLS: CONFIG_TLS, or the tls module)"),
            )
        })?;
        offered.0[cipher as usize] = setsockopt(&socket, TcpTlsTx, &cipher.sample()).is_ok();
    }
    Ok(offered)
}

/// The kernel's key structure for one direction of a session.
fn crypto_info(
    tls13: bool,
    seq: u64,
    secrets: ConnectionTrafficSecrets,
) -> Result<TlsCryptoInfo, HandOverError> {
    let version = if tls13 {
        libc::TLS_1_3_VERSION
    } else {
        libc::TLS_1_2_VERSION
    };
    let info = |cipher_type| libc::tls_crypto_info {
        version,
        cipher_type,
    };
    let rec_seq = seq.to_be_bytes();
    let wrong = || HandOverError::Keys("a key or IV of an unexpected length");
    // TLS 1.2's AES-256-GCM comes back as `Aes128Gcm` with a 32-byte key (rustls#1833).
    Ok(match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } if key.as_ref().len() == 16 => {
            let (salt, iv) = iv.as_ref().split_at(4);
            TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv: iv.try_into().map_err(|_| wrong())?,
                key: key.as_ref().try_into().map_err(|_| wrong())?,
                salt: salt.try_into().map_err(|_| wrong())?,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv: iv.try_into().map_err(|_| wrong())?,
                key: key.as_ref().try_into().map_err(|_| wrong())?,
                salt: salt.try_into().map_err(|_| wrong())?,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                iv: iv.as_ref().try_into().map_err(|_| wrong())?,
                key: key.as_ref().try_into().map_err(|_| wrong())?,
                salt: [],
                rec_seq,
            })
        }
        _ => {
            return Err(HandOverError::Keys(
                "a cipher the kernel has no structure for",
            ))
        }
    })
}

/// Turns `socket` into a kTLS socket with the session's keys and sequence numbers.
pub(crate) fn install(
    socket: BorrowedFd<'_>,
    tls13: bool,
    secrets: ExtractedSecrets,
) -> Result<(), HandOverError> {
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let tx = crypto_info(tls13, tx_seq, tx)?;
    let rx = crypto_info(tls13, rx_seq, rx)?;
    let kernel = |what| move |e: nix::Error| HandOverError::Kernel(what, e.into());
    setsockopt(&socket, TcpUlp::default(), b"tls").map_err(kernel("TCP_ULP tls"))?;
    setsockopt(&socket, TcpTlsTx, &tx).map_err(kernel("TLS_TX"))?;
    setsockopt(&socket, TcpTlsRx, &rx).map_err(kernel("TLS_RX"))?;
    Ok(())
}

/// Reads the control record (alert, handshake message, …) at the head of a kTLS socket's
/// queue: its record type and content (at most one record: 2^14 bytes).
pub(crate) fn read_control(socket: BorrowedFd<'_>) -> io::Result<(u8, Vec<u8>)> {
    let mut content = vec![0u8; 1 << 14];
    let mut space = nix::cmsg_space!(u8);
    let mut iov = [IoSliceMut::new(&mut content)];
    let got = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let mut kind = None;
    for cmsg in got.cmsgs()? {
        if let ControlMessageOwned::TlsGetRecordType(t) = cmsg {
            kind = Some(match t {
                TlsGetRecordType::ChangeCipherSpec => CHANGE_CIPHER_SPEC,
                TlsGetRecordType::Alert => ALERT,
                TlsGetRecordType::Handshake => HANDSHAKE,
                TlsGetRecordType::ApplicationData => APPLICATION_DATA,
                TlsGetRecordType::Unknown(t) => t,
                _ => 0,
            });
        }
    }
    let n = got.bytes;
    let kind = kind.ok_or_else(|| io::Error::other("a kTLS read came without its record type"))?;
    content.truncate(n);
    Ok((kind, content))
}

/// Sends a `close_notify` alert on a kTLS socket (the kernel encrypts it as an alert
/// record). `WouldBlock` when the send buffer is full.
pub(crate) fn send_close_notify(socket: impl AsFd) -> io::Result<()> {
    /// A control message with one byte of data, aligned as the kernel reads it.
    #[repr(C)]
    struct Control {
        header: libc::cmsghdr,
        data: [u8; 8],
    }
    // Warning level, close_notify.
    let mut alert = [1u8, 0];
    // SAFETY: all-zero is a valid `cmsghdr` and `msghdr` (integers and null pointers);
    // every field the kernel reads is set below.
    let mut control: Control = unsafe { std::mem::zeroed() };
    // SAFETY: CMSG_LEN/CMSG_SPACE only compute sizes.
    let (len, space) = unsafe { (libc::CMSG_LEN(1), libc::CMSG_SPACE(1)) };
    debug_assert!(space as usize <= std::mem::size_of::<Control>());
    control.header.cmsg_len = len as _;
    control.header.cmsg_level = libc::SOL_TLS;
    control.header.cmsg_type = libc::TLS_SET_RECORD_TYPE;
    control.data[0] = ALERT;
    let mut iov = libc::iovec {
        iov_base: alert.as_mut_ptr().cast(),
        iov_len: alert.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut control as *mut Control).cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov`, `alert` and `control`, which outlive the call; the
    // descriptor is a valid socket borrowed for the call.
    let sent = unsafe {
        libc::sendmsg(
            socket.as_fd().as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// TLS record types.
pub(crate) const CHANGE_CIPHER_SPEC: u8 = 20;
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;
