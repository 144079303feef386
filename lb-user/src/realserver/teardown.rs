//! `teardown`: undoes what the record says setup did, and no more.

use std::path::Path;

use super::{
    host::{self, LOOPBACK},
    state::{self, DecapRecord, StateLock},
    RealServerError,
};
use crate::decap;

/// Undoes what the record at `state_path` says setup did; returns one line per action.
/// A value someone changed since setup is left alone (with a note).
pub async fn teardown(
    handle: &rtnetlink::Handle,
    state_path: &Path,
) -> Result<Vec<String>, RealServerError> {
    let _lock = StateLock::acquire(state_path)?;
    let Some(mut rec) = state::load(state_path)? else {
        return Ok(vec![format!(
            "nothing to tear down (no record at {})",
            state_path.display()
        )]);
    };
    if rec.netns != state::netns_id()? {
        if state::netns_alive(rec.netns) {
            return Err(RealServerError::OtherNetns(state_path.to_path_buf()));
        }
        remove_record(state_path)?;
        return Ok(vec![format!(
            "removed {}: it recorded a network namespace that no longer exists",
            state_path.display()
        )]);
    }
    let mut out = Vec::new();
    let mut failed = Vec::new();
    if let Some(d) = rec.decap.take() {
        match teardown_decap(handle, &d).await {
            Ok(line) => out.push(line),
            Err(e) => {
                failed.push(format!("decapsulator: {e}"));
                rec.decap = Some(d);
            }
        }
    }
    let lo = host::ifindex(LOOPBACK);
    let mut kept_vips = Vec::new();
    for v in std::mem::take(&mut rec.vips) {
        if !v.added {
            out.push(format!(
                "left {} on {LOOPBACK} (it was there before setup)",
                v.addr
            ));
            continue;
        }
        let Some(lo) = lo else { continue };
        match host::remove_address(handle, lo, v.addr).await {
            Ok(true) => out.push(format!("removed {}/{} from {LOOPBACK}", v.addr, v.prefix)),
            Ok(false) => out.push(format!("{} was already gone from {LOOPBACK}", v.addr)),
            Err(e) => {
                failed.push(format!("{}: {e}", v.addr));
                kept_vips.push(v);
            }
        }
    }
    rec.vips = kept_vips;
    let mut kept_sysctls = Vec::new();
    // Restored in reverse, so interface values come back before "all" (order is harmless here,
    // but mirrors setup).
    for r in std::mem::take(&mut rec.sysctls).into_iter().rev() {
        let Some(orig) = &r.original else { continue };
        let s = r.sysctl();
        match s.read() {
            Ok(cur) if cur == r.value => match s.write(orig) {
                Ok(()) => out.push(format!("restored {} = {orig}", s.key())),
                Err(e) => {
                    failed.push(e.to_string());
                    kept_sysctls.push(r.clone());
                }
            },
            Ok(cur) => out.push(format!(
                "left {} = {cur} (changed since setup set {}; it was {orig} before)",
                s.key(),
                r.value
            )),
            // The interface is gone: nothing left to restore.
            Err(_) => out.push(format!("{} no longer exists", s.key())),
        }
    }
    rec.sysctls = kept_sysctls;
    if failed.is_empty() {
        remove_record(state_path)?;
        out.push("torn down".into());
        Ok(out)
    } else {
        state::save(state_path, &rec)?;
        Err(RealServerError::Incomplete(failed.join("; ")))
    }
}

async fn teardown_decap(
    handle: &rtnetlink::Handle,
    d: &DecapRecord,
) -> Result<String, RealServerError> {
    let Some(ifindex) = host::ifindex(&d.iface).filter(|i| *i == d.ifindex) else {
        return Ok(format!("{} is gone, and the decapsulator with it", d.iface));
    };
    match decap::attached(handle, ifindex).await? {
        Some(at) if at.prog_id == d.prog_id => {
            decap::detach(handle, ifindex, &d.iface, at).await?;
            Ok(format!(
                "detached the decapsulator (id {}) from {}",
                d.prog_id, d.iface
            ))
        }
        Some(at) => Ok(format!(
            "left program id {} on {} (it replaced the decapsulator)",
            at.prog_id, d.iface
        )),
        None => Ok(format!(
            "the decapsulator was already detached from {}",
            d.iface
        )),
    }
}

/// Removes the record, and a named namespace's record directory with it.
fn remove_record(path: &Path) -> Result<(), RealServerError> {
    state::remove(path)?;
    if state::is_netns_default(path) {
        if let Some(dir) = path.parent() {
            // Not empty (someone keeps files there): leave it.
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}
