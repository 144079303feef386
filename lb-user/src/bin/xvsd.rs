//! xvsd: the xvs director daemon.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lb_user::{
    daemon::{self, DaemonOptions},
    dataplane::AttachMode,
    proto::DEFAULT_SOCKET,
};

/// The xvs director daemon: loads the XDP program on an interface and serves xvsadm.
#[derive(Parser, Debug)]
#[command(name = "xvsd", version)]
struct Opts {
    /// Interface to attach the director to.
    #[arg(long)]
    iface: String,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "native")]
    xdp_mode: AttachMode,
    /// Control socket (root only).
    #[arg(long, env = "XVS_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Connection-table capacity (entries); the least recently used entry makes room when full.
    #[arg(long, default_value_t = lb_common::DEFAULT_CONN_ENTRIES)]
    conn_table_size: u32,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let opts = Opts::parse();
    daemon::run(DaemonOptions {
        iface: opts.iface.clone(),
        mode: opts.xdp_mode,
        socket: opts.socket,
        conn_table_size: opts.conn_table_size,
    })
    .await
    .with_context(|| format!("xvsd on {}", opts.iface))
}
