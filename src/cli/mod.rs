//! The command line, one module per command; `main` only dispatches.

pub(crate) mod args;
pub(crate) mod common;
pub(crate) mod connect;
pub(crate) mod control;
pub(crate) mod coordinator;
pub(crate) mod demo;
pub(crate) mod lab;
pub(crate) mod node;
pub(crate) mod relay;
