//! The native path: a reachable Bitcoin node ("coordinator") that nodes
//! behind NATs keep a session with swaps their observed endpoints and tells
//! both when to dial. Spec: docs/native-protocol.md.

pub mod machine;
pub mod messages;
