//! The control API: its JSON model and the `Control` operations behind it (`model`), and
//! the HTTP server that exposes them on a Unix socket or TCP (`server`), within bounds on
//! its clients (`connections`) and, on TCP, a bearer token (`token`).

pub mod connections;
pub mod firewall;
pub mod model;
pub mod server;
pub mod token;
