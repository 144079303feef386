//! xvsadm's own subcommands beside ipvsadm's language (which is `lb_core::rules`): `stats`
//! (a live view) and `apply` / `reload` / `export` (the configuration file).

pub mod config_cli;
pub mod watch;
