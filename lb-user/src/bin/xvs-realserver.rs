//! xvs-realserver: sets up a real server for tunnelled traffic (`xvsadm realserver ...` runs
//! this binary, so the CLI itself needs no eBPF loader).
use std::{ffi::OsString, process::ExitCode};

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1);
    lb_user::realserver::main(std::iter::once(OsString::from("realserver")).chain(args))
}
