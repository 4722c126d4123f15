//! Helpers shared by the end-to-end tests: real servers on 127.0.0.1 port 0
//! (`tcp`), the proxy started as a real process from a config (`proxy`), and
//! a minimal HTTP client for the admin API (`admin`).
#![allow(dead_code)]

pub mod admin;
pub mod dns;
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
