//! `ringmesh demo`: the landscape of the service-mesh talk ringmesh grew
//! from (README "The demo"). This crate holds the demo's own services;
//! they know nothing of the mesh but the trace headers they pass on.

pub mod app;
