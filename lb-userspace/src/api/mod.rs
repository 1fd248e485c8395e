//! The control API: its JSON model and the `Control` operations behind it (`model`), and
//! the HTTP server that exposes them on a Unix socket or TCP (`server`).

pub mod firewall;
pub mod model;
pub mod server;
