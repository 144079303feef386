//! xvsadm's own subcommands beside ipvsadm's language (which is `lb_core::rules`): `stats`
//! (a live view), `apply` / `reload` / `export` (the configuration file), `drain` (a
//! director or a real server out of service, gently) and `synced` (whether the peers' tables
//! are held, for keepalived), `top` (a sortable live view, rates from two listings) and
//! `import` (a keepalived.conf as a configuration file).

pub mod config_cli;
pub mod drain;
pub mod import;
pub mod synced;
pub mod top;
pub mod watch;
