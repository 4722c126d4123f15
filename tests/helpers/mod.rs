//! Helpers shared by the end-to-end tests: real servers on 127.0.0.1 port 0
//! (`tcp`), the proxy started as a real process from a config (`proxy`), and
//! a minimal HTTP client for the admin API (`admin`).
#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod dns;
pub mod grpc;
pub mod http;
pub mod mesh;
pub mod proxy;
pub mod tcp;
pub mod tls;

/// Generates one test per I/O engine from a body taking the engine name.
#[macro_export]
macro_rules! on_both_engines {
    ($(fn $name:ident($engine:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn run($engine: &'static str) $body
                #[test]
                fn io_uring() { run("uring") }
                #[test]
                fn epoll() { run("epoll") }
            }
        )*
    };
}

/// Generates one test per I/O engine and forwarding path (`zero_copy:
/// never` keeps user-space buffers, `always` splices from the first byte)
/// from a body taking the engine name and the `zero_copy` value.
#[macro_export]
macro_rules! on_every_path {
    ($(fn $name:ident($engine:ident, $zero_copy:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn run($engine: &'static str, $zero_copy: &'static str) $body
                #[test]
                fn io_uring_buffered() { run("uring", "never") }
                #[test]
                fn io_uring_splice() { run("uring", "always") }
                #[test]
                fn epoll_buffered() { run("epoll", "never") }
                #[test]
                fn epoll_splice() { run("epoll", "always") }
            }
        )*
    };
}
