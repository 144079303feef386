//! The data plane's own log (aya-log), only when asked: `xvsd --kernel-log LEVEL`. The XDP
//! programs log every verdict's reason (drops at debug, everything else at trace); the level is
//! set in the program's read-only AYA_LOG_LEVEL before it is loaded, so with the default
//! (`off`) the verifier drops the logging code and the fast path pays nothing. Records reach
//! xvsd's tracing output with the target [`TARGET`].

use std::os::fd::AsRawFd;

use aya_log::EbpfLogger;
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

/// Forwards the data plane's records to the `log` facade (and so to tracing) as they come, on
/// a thread of its own: under a flood of logged packets draining the ring buffer can take all
/// of a core, which must not be one of the controller's workers.
pub fn spawn(mut logger: Logger) {
    let spawned = std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || loop {
            let mut fd = libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut fd, 1, -1) };
            if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                warn!(error = %std::io::Error::last_os_error(), "the data plane's log cannot be read any more");
                return;
            }
            logger.flush();
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the data plane's log reader: --kernel-log records are lost");
    }
}
