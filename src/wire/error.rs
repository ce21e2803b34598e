use std::fmt;
use std::io;
use std::time::Duration;

/// Where in a session something went wrong; part of every error so that a
/// log line or outcome record says which step a peer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Asking the coordinator or relay for the connection.
    Coordination,
    /// The punch itself: no direct TCP connection came about.
    Punch,
    /// Proving the node key over the BIP324 session id.
    Auth,
    /// A sidecar's splice handshake: the keys proved over both Bitcoin
    /// nodes' first bytes, the local Bitcoin node reached.
    Splice,
    Connect,
    Sniff,
    Bip324KeyExchange,
    Bip324Garbage,
    Bip324Version,
    Version,
    Verack,
    Ping,
    Serving,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Coordination => "coordination",
            Stage::Punch => "punch",
            Stage::Auth => "peer authentication",
            Stage::Splice => "splice handshake",
            Stage::Connect => "TCP connect",
            Stage::Sniff => "transport detection",
            Stage::Bip324KeyExchange => "BIP324 key exchange",
            Stage::Bip324Garbage => "BIP324 garbage terminator",
            Stage::Bip324Version => "BIP324 version packet",
            Stage::Version => "version",
            Stage::Verack => "verack",
            Stage::Ping => "ping/pong",
            Stage::Serving => "serving",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    #[error("no progress for {:.1}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("peer sent a v1 (plaintext) message where BIP324 was expected")]
    PeerSpeaksV1,
    #[error("BIP324: {0}")]
    Bip324(#[from] super::bip324::CryptoError),
    #[error("message of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("wrong network magic {got}, expected {expected}")]
    WrongMagic { got: String, expected: String },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("transport not allowed: {0}")]
    NotAllowed(&'static str),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => WireError::PeerClosed,
            _ => WireError::Io(e),
        }
    }
}

/// A failed session: the step it reached and why it stopped.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {error}")]
pub struct SessionError {
    pub stage: Stage,
    #[source]
    pub error: WireError,
    /// True when the failure looks like a v1-only peer refusing BIP324: the
    /// peer hung up before sending its key, or answered in plaintext. The
    /// `auto` transport reconnects with v1 in that case, as Bitcoin Core does.
    pub peer_may_be_v1: bool,
}

impl SessionError {
    pub fn new(stage: Stage, error: WireError) -> Self {
        let peer_may_be_v1 = matches!(
            (&error, stage),
            (WireError::PeerSpeaksV1, _) | (WireError::PeerClosed, Stage::Bip324KeyExchange)
        );
        Self {
            stage,
            error,
            peer_may_be_v1,
        }
    }
}

pub trait AtStage<T> {
    fn at(self, stage: Stage) -> Result<T, SessionError>;
}

impl<T, E: Into<WireError>> AtStage<T> for Result<T, E> {
    fn at(self, stage: Stage) -> Result<T, SessionError> {
        self.map_err(|e| SessionError::new(stage, e.into()))
    }
}
