//! The xvs controller's pure core, shared by the daemon (`lb-user`) and the CLI (`xvsadm`):
//! no kernel maps, no sockets, no async runtime, all of it unit-tested without privileges.
//!
//! Layers, lowest first; a module imports only from layers below its own (or its own layer
//! where named), which `tests::imports_point_down_the_layers` checks:
//! 1. the domain: [`model`] (services, real servers, changes, timeouts), [`check`] (health
//!    checks as configured), [`stats`], [`names`], [`netns`];
//! 2. computations and persistence over the domain: [`scheduler`] (tables), [`estimator`]
//!    (rates), [`pressure`] (the connection table's fill and losses), [`health`] (the up/down machine, latency histograms), [`state`] (the saved
//!    configuration), [`config_file`] (the TOML file), [`sync`] (IPVS's connection-sync
//!    wire format), [`announce`] (which VIPs a director announces to its routers), [`station`]
//!    (which MACs the director answers on each interface);
//! 3. the control protocol between xvsadm and xvsd: [`proto`], and its blocking [`client`];
//! 4. presentation: [`listing`] (ipvsadm's output), [`help`];
//! 5. ipvsadm's command language: [`rules`] (commands typed and saved by `-S`, read by `-R`);
//! 6. [`diff`]: the changes from one configuration to another, printed as rules;
//! 7. [`import`]: other load balancers' configurations (keepalived.conf) as configuration
//!    files, checked with [`config_file`].

pub mod announce;
pub mod check;
pub mod client;
pub mod config_file;
pub mod diff;
pub mod estimator;
pub mod flock;
pub mod health;
pub mod help;
pub mod import;
pub mod listing;
pub mod model;
pub mod names;
pub mod netns;
pub mod pressure;
pub mod proto;
pub mod rules;
pub mod scheduler;
pub mod state;
pub mod station;
pub mod stats;
pub mod sync;

#[cfg(test)]
mod layers;
