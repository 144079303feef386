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

/// A program step's outcome in one register, for steps that are BPF subprograms of their own
/// (a subprogram returns one register): kind in bits 0..8 (0 Tx, 1 Redirect, 2 Err, 3 too big
/// for the route, to be answered by the caller), the reason in bits 8..16, the ifindex of a
/// redirect or the route MTU in bits 32..64.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Packed(u64);

impl Packed {
    /// Packs an outcome.
    #[inline(always)]
    pub fn encode(r: Result<Out, Reason>) -> Packed {
        Packed(match r {
            Ok(Out::Tx(reason)) => (reason as u64) << 8,
            Ok(Out::Redirect(ifindex, reason)) => 1 | (reason as u64) << 8 | (ifindex as u64) << 32,
            Err(reason) => 2 | (reason as u64) << 8,
        })
    }

    /// Too big for the route, whose MTU is `mtu`: the caller answers with ICMP.
    #[inline(always)]
    pub fn too_big_of(mtu: u32) -> Packed {
        Packed(3 | (mtu as u64) << 32)
    }

    /// The route MTU, when the step found the packet too big.
    #[inline(always)]
    pub fn too_big(self) -> Option<u32> {
        (self.0 & 0xff == 3).then_some((self.0 >> 32) as u32)
    }

    /// The outcome packed (not too big).
    #[inline(always)]
    pub fn decode(self) -> Result<Out, Reason> {
        let reason =
            Reason::from_index(((self.0 >> 8) & 0xff) as u32).unwrap_or(Reason::DropBadBackend);
        match self.0 & 0xff {
            0 => Ok(Out::Tx(reason)),
            1 => Ok(Out::Redirect((self.0 >> 32) as u32, reason)),
            _ => Err(reason),
        }
    }
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
