//! The one way into packet memory: a bounds-checked accessor that hands out header references,
//! and the head/tail adjustments that move the packet under them.
//!
//! Every packet read and write of the data plane goes through [`Packet::header`] or
//! [`Packet::header_mut`], so the verifier sees one bounds-check shape and the `unsafe` of packet
//! access lives here only. A reference borrows the `Packet`; [`Packet::adjust_head`] and
//! [`Packet::adjust_tail`] take it mutably, so no header reference survives the packet moving.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

use crate::parse::{EthHdr, GueHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpGueHdr, UdpHdr, VlanHdr};

/// A type that may be read from and written to packet memory in place.
///
/// # Safety
/// Implementors have alignment 1 (a header sits at any offset in the frame) and are valid for
/// every bit pattern (the bytes come from the wire).
pub unsafe trait Header {}

// SAFETY: byte arrays have alignment 1 and no invalid values.
unsafe impl<const N: usize> Header for [u8; N] {}

macro_rules! headers {
    ($($t:ty),* $(,)?) => {
        // SAFETY: `#[repr(C)]` structs of `u8` and `[u8; N]` fields only (checked at compile
        // time for the alignment below): alignment 1, every bit pattern valid.
        $(unsafe impl Header for $t {}
        const _: () = assert!(core::mem::align_of::<$t>() == 1);)*
    };
}
headers!(EthHdr, VlanHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, IcmpHdr, GueHdr, UdpGueHdr);

/// The kernel refused to move the frame's head or tail (not enough room); the frame is unchanged.
pub struct Refused;

/// The frame an XDP program runs on.
pub struct Packet {
    ctx: XdpContext,
}

impl Packet {
    /// Wraps the program's context.
    #[inline(always)]
    pub fn new(ctx: XdpContext) -> Self {
        Self { ctx }
    }

    /// The program's context (helpers, tail calls and logging take it).
    #[inline(always)]
    pub fn ctx(&self) -> &XdpContext {
        &self.ctx
    }

    /// Frame length in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    /// Whether the frame has no bytes at all.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The interface the frame arrived on.
    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }

    /// Whether the frame's first `len` bytes exist (a length check without access).
    #[inline(always)]
    pub fn has(&self, len: usize) -> bool {
        self.ctx.data() + len <= self.ctx.data_end()
    }

    /// The address of a `T` at `offset` when all of it is inside the frame.
    #[inline(always)]
    fn bounded<T: Header>(&self, offset: usize) -> Option<usize> {
        let start = self.ctx.data();
        if start + offset + size_of::<T>() > self.ctx.data_end() {
            return None;
        }
        Some(start + offset)
    }

    /// The `T` at `offset` bytes into the frame, or None when the frame is too short.
    #[inline(always)]
    pub fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let at = self.bounded::<T>(offset)?;
        // SAFETY: `bounded` checked that the `T` lies inside the frame, which stays put while
        // `self` is borrowed (only adjust_head/tail, which need `&mut self`, move it); any bit
        // pattern is a valid `T` and its alignment is 1 (`Header`). A frame is never at address
        // 0: telling the compiler so spares every caller a null test of the Option<&T>.
        unsafe {
            core::hint::assert_unchecked(at != 0);
            Some(&*(at as *const T))
        }
    }

    /// The `T` at `offset`, writable in place; None when the frame is too short.
    #[inline(always)]
    pub fn header_mut<T: Header>(&mut self, offset: usize) -> Option<&mut T> {
        let at = self.bounded::<T>(offset)?;
        // SAFETY: as in `header`; the `&mut self` borrow makes this the only live reference
        // into the frame.
        unsafe {
            core::hint::assert_unchecked(at != 0);
            Some(&mut *(at as *mut T))
        }
    }

    /// Moves the frame's start by `delta` bytes (negative: grows headroom into the frame).
    #[inline(always)]
    pub fn adjust_head(&mut self, delta: i32) -> Result<(), Refused> {
        // SAFETY: the context is the program's own; `&mut self` guarantees that no header
        // reference into the old layout is alive.
        match unsafe { bpf_xdp_adjust_head(self.ctx.ctx, delta) } {
            0 => Ok(()),
            _ => Err(Refused),
        }
    }

    /// Moves the frame's end by `delta` bytes (negative: trims).
    #[inline(always)]
    pub fn adjust_tail(&mut self, delta: i32) -> Result<(), Refused> {
        // SAFETY: as in `adjust_head`.
        match unsafe { bpf_xdp_adjust_tail(self.ctx.ctx, delta) } {
            0 => Ok(()),
            _ => Err(Refused),
        }
    }
}
