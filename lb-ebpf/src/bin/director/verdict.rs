//! The end of every director program run: the outcome counted under its reason, logged when
//! asked, and turned into the XDP verdict.

use aya_ebpf::bindings::xdp_action;
use aya_log_ebpf::{debug, trace};
use lb_common::Reason;
use lb_ebpf::{helpers::redirect, packet::Packet};

use crate::maps::count;

/// The target of the records (xvsd's kernel_log::TARGET), whatever module logs them.
const TARGET: &str = "xvs_director";

/// Where a forwarded frame leaves.
pub enum Out {
    /// XDP_TX, counted under this reason.
    Tx(Reason),
    /// XDP_REDIRECT to this interface (a next hop behind another interface), counted under
    /// this reason.
    Redirect(u32, Reason),
}

/// Counts the outcome of a program run and turns it into the XDP verdict: Ok forwards, Err
/// passes (Pass* reasons) or drops (Drop* reasons). Logs it only when xvsd runs with
/// `--kernel-log` (drops at debug, everything at trace): the loader sets AYA_LOG_LEVEL, a
/// read-only global, so at its default (off) the verifier removes the logging.
#[inline(always)]
pub fn verdict(pkt: &Packet, result: Result<Out, Reason>) -> u32 {
    let ctx = pkt.ctx();
    match result {
        Ok(Out::Tx(reason)) => {
            count(reason);
            trace!(ctx, target: TARGET, "{}", reason.name());
            xdp_action::XDP_TX
        }
        Ok(Out::Redirect(ifindex, reason)) => {
            count(reason);
            trace!(ctx, target: TARGET, "{} ifindex {}", reason.name(), ifindex);
            redirect(ifindex)
        }
        Err(reason) => {
            count(reason);
            if reason.is_drop() {
                debug!(ctx, target: TARGET, "{}", reason.name());
                xdp_action::XDP_DROP
            } else {
                trace!(ctx, target: TARGET, "{}", reason.name());
                xdp_action::XDP_PASS
            }
        }
    }
}
