//! A steady load of new connections for tests that disturb the director under traffic: curl in
//! the client namespace, in batches of requests that each open a new connection, until
//! stopped or a bound in count or time is reached. Every answer that is not HTTP 200 counts as
//! a failure.

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{netns::cmd_in, poll};

/// Requests per curl process.
const BATCH: usize = 20;

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed (curl's status, 000 when no answer came).
    pub failed: u64,
    /// The first few failures: status and when they happened, since the load started.
    pub failures: Vec<String>,
    /// How long the load ran.
    pub elapsed: Duration,
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    started: Instant,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Load {
    /// Starts GETting `url` from namespace `ns`, each request on a new connection, until
    /// stopped, `max_requests` were sent, or `max_time` passed.
    pub fn start(ns: &str, url: &str, max_requests: u64, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let thread = {
            let (stop, ok, failed, failures) =
                (stop.clone(), ok.clone(), failed.clone(), failures.clone());
            let (ns, url) = (ns.to_string(), url.to_string());
            std::thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::SeqCst)
                    && ok.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < max_requests
                    && started.elapsed() < max_time
                {
                    let mut cmd = cmd_in(&ns, "curl");
                    cmd.args([
                        "-s",
                        "--connect-timeout",
                        "2",
                        "-m",
                        "3",
                        "-H",
                        "Connection: close",
                        "-w",
                        "%{http_code}\\n",
                    ]);
                    for _ in 0..BATCH {
                        cmd.args(["-o", "/dev/null", &url]);
                    }
                    let out = cmd
                        .stdin(Stdio::null())
                        .stderr(Stdio::null())
                        .output()
                        .context("running curl")?;
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    let codes: Vec<&str> = text.lines().collect();
                    for i in 0..BATCH {
                        match codes.get(i) {
                            Some(&"200") => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                let mut f = failures.lock().expect("not poisoned");
                                if f.len() < 20 {
                                    f.push(format!(
                                        "{} at {:?}",
                                        other.unwrap_or(&"no status"),
                                        started.elapsed()
                                    ));
                                }
                            }
                        }
                    }
                }
                Ok(())
            })
        };
        Load {
            stop,
            ok,
            failed,
            failures,
            started,
            thread: Some(thread),
        }
    }

    /// Requests done so far (answered or failed).
    pub fn done(&self) -> u64 {
        self.ok.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests than now are done.
    pub fn wait_for_more(&self, n: u64, timeout: Duration) -> Result<u64> {
        let target = self.done() + n;
        poll(timeout, &format!("{n} more requests of the load"), || {
            (self.done() >= target).then(|| self.done())
        })
    }

    /// Stops the load and reports.
    pub fn stop(mut self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        }
        Ok(LoadReport {
            ok: self.ok.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            failures: self.failures.lock().expect("not poisoned").clone(),
            elapsed: self.started.elapsed(),
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
