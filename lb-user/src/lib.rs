//! The xvs controller's I/O shell: the data plane (loading, pinning, map writes), health
//! probes, neighbour resolution, the control socket, metrics, and the daemon that ties them
//! together; also the real-server setup behind `xvsadm realserver`.
//!
//! The pure layers (domain model, ipvsadm's rules, the config file, scheduler tables, the diff,
//! the control protocol, listings) are the `lb-core` crate; they are re-exported here under
//! their own names so the shell and its tests say `crate::model`, `lb_user::proto`.

pub use lb_core::{
    check, client, config_file, diff, estimator, help, listing, model, names, netns, pressure,
    proto, rules, scheduler, state, stats,
};

pub mod access;
pub mod announce;
pub mod audit;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod health;
pub mod kernel_log;
pub mod local_addr;
pub mod metrics;
pub mod neighbor;
pub mod object;
pub mod realserver;
pub mod station;
pub mod sync;
pub mod tunnel;
