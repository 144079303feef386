//! The data plane's own log (aya-log), only when asked: `xvsd --kernel-log LEVEL`. The XDP
//! programs log every verdict's reason (drops at debug, everything else at trace); the level is
//! set in the program's read-only AYA_LOG_LEVEL before it is loaded, so with the default
//! (`off`) the verifier drops the logging code and the fast path pays nothing. Records reach
//! xvsd's tracing output with the target [`TARGET`].

use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::warn;

/// The target the data plane's records are logged under (the eBPF crate's module).
pub const TARGET: &str = "xvs_director";

/// The name of the level global aya-log-ebpf reads.
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// How much the data plane logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLog {
    /// Nothing (the default): no logging code runs.
    #[default]
    Off,
    /// Errors.
    Error,
    /// Warnings and errors.
    Warn,
    /// Information and above.
    Info,
    /// Every dropped packet, with its reason.
    Debug,
    /// Every packet, with its verdict's reason.
    Trace,
}

impl KernelLog {
    /// The value of AYA_LOG_LEVEL (aya_log_common::Level: Error = 1 ... Trace = 5).
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The tracing directive that lets these records through whatever RUST_LOG says.
    pub fn directive(self) -> Option<String> {
        let level = match self {
            KernelLog::Off => return None,
            KernelLog::Error => "error",
            KernelLog::Warn => "warn",
            KernelLog::Info => "info",
            KernelLog::Debug => "debug",
            KernelLog::Trace => "trace",
        };
        Some(format!("{TARGET}={level}"))
    }
}

/// The logger of a loaded program: reads its ring buffer.
pub type Logger = EbpfLogger<&'static dyn log::Log>;

/// Forwards the data plane's records to the `log` facade (and so to tracing) as they come.
pub fn spawn(logger: Logger) {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer's descriptor for as long as it lives and
        // always answers that one.
        let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "cannot poll the data plane's log: --kernel-log records are lost");
                return;
            }
        };
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}
