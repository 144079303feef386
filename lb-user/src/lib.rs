//! The xvs controller: desired state, scheduler tables, the data plane behind it, the control
//! socket protocol, and the ipvsadm-compatible command line.

pub mod access;
pub mod check;
pub mod cli;
pub mod config_cli;
pub mod config_file;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod diff;
pub mod estimator;
pub mod health;
pub mod help;
pub mod kernel_log;
pub mod listing;
pub mod metrics;
pub mod model;
pub mod names;
pub mod neighbor;
pub mod netns;
pub mod object;
pub mod proto;
pub mod realserver;
pub mod scheduler;
pub mod state;
pub mod tunnel;
pub mod watch;
