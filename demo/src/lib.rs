//! `ringmesh demo`: the landscape of the service-mesh talk ringmesh grew
//! from (README "The demo"): a control plane, an ingress gateway, the
//! `product`, `recommendation` and `review` services with a sidecar each,
//! a background user, and the walkthrough's steps.
//!
//! - [`app`]: the services themselves (they know nothing of the mesh but
//!   the trace headers they pass on);
//! - [`landscape`]: where everything runs, and the desired state it starts from;
//! - [`state`]: what the walkthrough has changed;
//! - [`up`]: starting and stopping the processes, the background user, logs;
//! - [`step`]: the walkthrough's steps, through the control plane's API.

pub mod app;
pub mod landscape;
pub mod state;
pub mod step;
pub mod up;
