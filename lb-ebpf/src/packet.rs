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
// SAFETY: arrays of 32-bit fields as bytes (a header seen word by word): alignment 1, no
// invalid values.
unsafe impl<const N: usize> Header for [[u8; 4]; N] {}

macro_rules! headers {
    ($($t:ty),* $(,)?) => {
        // SAFETY: `#[repr(C)]` structs of `u8` and `[u8; N]` fields only (checked at compile
        // time for the alignment below): alignment 1, every bit pattern valid.
        $(unsafe impl Header for $t {}
        const _: () = assert!(core::mem::align_of::<$t>() == 1);)*
    };
}
headers!(EthHdr, VlanHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr, IcmpHdr, GueHdr, UdpGueHdr);

/// A header's first `N` bytes as one field (both ports of TCP or UDP, for one load).
#[inline(always)]
pub fn leading<const N: usize, T: Header>(header: &T) -> &[u8; N] {
    const { assert!(N <= size_of::<T>()) };
    // SAFETY: the first N bytes of a `T` (N <= its size, checked above) are initialised bytes
    // of alignment 1, borrowed for as long as the header.
    unsafe { &*(header as *const T as *const [u8; N]) }
}

/// One-instruction loads and stores of 2, 4 or 8 bytes (native order), whatever their
/// alignment.
///
/// The compiler, told that header bytes have alignment 1, would assemble every field byte by
/// byte. The verifier allows an access at any alignment to packet memory and map values (its
/// strict alignment mode is off for XDP), and x86-64 and arm64 do them at full speed; it insists
/// that a stack access be aligned to its size. So these are for header fields as
/// [`Packet::header`] hands them out, map values, and stack memory aligned to the access (such
/// as the 8-aligned address fields of `Parsed` and `FlowKey`, or [`StackAddr`]), never for other
/// local arrays: a misuse is refused when the program is loaded, never at run time.
macro_rules! word_access {
    ($($load:ident, $store:ident, $t:ty, $n:literal, $insn:literal;)*) => {$(
        #[doc = concat!("Loads ", $n, " bytes in one instruction (see `word_access`).")]
        #[inline(always)]
        pub fn $load(field: &[u8; $n]) -> $t {
            let v: u64;
            // SAFETY: `field` is a valid reference to exactly the bytes read; the asm writes
            // only its output register.
            unsafe {
                core::arch::asm!(
                    concat!("{0} = *(", $insn, " *)({1} + 0)"),
                    lateout(reg) v,
                    in(reg) field.as_ptr(),
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            v as $t
        }

        #[doc = concat!("Stores ", $n, " bytes in one instruction (see `word_access`).")]
        #[inline(always)]
        pub fn $store(field: &mut [u8; $n], v: $t) {
            // SAFETY: `field` is a valid exclusive reference to exactly the bytes written.
            unsafe {
                core::arch::asm!(
                    concat!("*(", $insn, " *)({0} + 0) = {1}"),
                    in(reg) field.as_mut_ptr(),
                    in(reg) v as u64,
                    options(nostack, preserves_flags),
                );
            }
        }
    )*};
}
word_access! {
    load_u16, store_u16, u16, 2, "u16";
    load_u32, store_u32, u32, 4, "u32";
    load_u64, store_u64, u64, 8, "u64";
}

/// Copies a MAC address into a header field in two loads and two stores: from packet memory, a
/// map value, or a 4-aligned stack slot ([`crate::route::Mac`]); see `word_access`.
#[inline(always)]
pub fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    // SAFETY: a [u8; 6] is a [u8; 4] followed by a [u8; 2], all of alignment 1; `dst` and `src`
    // are distinct borrows (one exclusive), so the halves do not alias anything live.
    let (s4, s2) = unsafe {
        (
            &*(src.as_ptr() as *const [u8; 4]),
            &*(src.as_ptr().add(4) as *const [u8; 2]),
        )
    };
    let (hi, lo) = (load_u32(s4), load_u16(s2));
    // SAFETY: as above, for the destination.
    let (d4, d2) = unsafe {
        (
            &mut *(dst.as_mut_ptr() as *mut [u8; 4]),
            &mut *(dst.as_mut_ptr().add(4) as *mut [u8; 2]),
        )
    };
    store_u32(d4, hi);
    store_u16(d2, lo);
}

/// A MAC address as lb_common::link::mac_word has it (its bytes in memory order in the low 48
/// bits), in two loads: from packet memory or a map value; see `word_access`.
#[inline(always)]
pub fn load_mac_word(mac: &[u8; 6]) -> u64 {
    // SAFETY: a [u8; 6] is a [u8; 4] followed by a [u8; 2], all of alignment 1.
    let (m4, m2) = unsafe {
        (
            &*(mac.as_ptr() as *const [u8; 4]),
            &*(mac.as_ptr().add(4) as *const [u8; 2]),
        )
    };
    load_u32(m4) as u64 | (load_u16(m2) as u64) << 32
}

/// An address in the 16-byte form as four 32-bit words in memory order, one load each: from
/// packet memory, a map value, or a stack array aligned to 4 (the address fields of `Parsed`
/// and `FlowKey`, which are aligned to 8); never from another stack array (see `word_access`).
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    // SAFETY: [u8; 16] and [[u8; 4]; 4] have the same size and alignment 1.
    let q = unsafe { &*(a.as_ptr() as *const [[u8; 4]; 4]) };
    [
        load_u32(&q[0]),
        load_u32(&q[1]),
        load_u32(&q[2]),
        load_u32(&q[3]),
    ]
}

/// A 16-byte address kept on the stack, aligned so that [`addr_words`] may read it.
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StackAddr(pub [u8; 16]);

impl StackAddr {
    /// An address read as four words (from packet memory or a map value, as [`addr_words`]
    /// reads), kept on the stack: a plain `[u8; 16]` copy moves it a byte at a time.
    #[inline(always)]
    pub fn load(a: &[u8; 16]) -> StackAddr {
        // SAFETY: four u32 are sixteen bytes, every bit pattern a valid StackAddr.
        unsafe { core::mem::transmute::<[u32; 4], StackAddr>(addr_words(a)) }
    }
}

/// Whether an address (in packet memory, a map value or an aligned stack array, as for
/// [`addr_words`]) is all zero, in four word loads: comparing with `[0u8; 16]` builds that array
/// with a byte-at-a-time memset first.
#[inline(always)]
pub fn addr_is_zero(a: &[u8; 16]) -> bool {
    let w = addr_words(a);
    w[0] | w[1] | w[2] | w[3] == 0
}

/// Writes an IPv6 address's words (as [`addr_words`] gives them) into a header field or a map
/// value; never into a stack array (see `word_access`).
#[inline(always)]
pub fn store_addr6(field: &mut [u8; 16], words: &[u32; 4]) {
    // SAFETY: as in `addr_words`, for the destination.
    let q = unsafe { &mut *(field.as_mut_ptr() as *mut [[u8; 4]; 4]) };
    store_u32(&mut q[0], words[0]);
    store_u32(&mut q[1], words[1]);
    store_u32(&mut q[2], words[2]);
    store_u32(&mut q[3], words[3]);
}

/// An IPv6 address field in two loads (see `word_access`).
#[inline(always)]
pub fn load_addr6(field: &[u8; 16]) -> [u8; 16] {
    // SAFETY: [u8; 16] and [[u8; 8]; 2] have the same size and alignment 1.
    let halves = unsafe { &*(field.as_ptr() as *const [[u8; 8]; 2]) };
    let words = [load_u64(&halves[0]), load_u64(&halves[1])];
    // SAFETY: two u64 are sixteen bytes, every bit pattern a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
}

/// A 16-byte address's first `prefix` bits (lb_common::mask_addr), in two loads and two ANDs;
/// from where [`addr_words`] may read, aligned to 8.
#[inline(always)]
pub fn masked_addr(a: &[u8; 16], prefix: u8) -> [u8; 16] {
    // SAFETY: [u8; 16] and [[u8; 8]; 2] have the same size and alignment 1.
    let halves = unsafe { &*(a.as_ptr() as *const [[u8; 8]; 2]) };
    let [m0, m1] = lb_common::prefix_masks(prefix);
    let words = [load_u64(&halves[0]) & m0, load_u64(&halves[1]) & m1];
    // SAFETY: two u64 are sixteen bytes, every bit pattern a valid [u8; 16].
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
}

/// An IPv4 address field as the 16-byte form (the address in the first four bytes, zeros
/// after), in one load.
#[inline(always)]
pub fn load_addr4(field: &[u8; 4]) -> [u8; 16] {
    let words = [load_u32(field), 0, 0, 0];
    // SAFETY: four u32 are sixteen bytes, every bit pattern a valid [u8; 16].
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

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
