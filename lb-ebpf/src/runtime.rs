//! What every eBPF object of the workspace needs once: the panic handler and the license.
//! A program binary gets both by linking this library (`use lb_ebpf as _;` where it uses
//! nothing else from it).

/// Never reached: the verifier rejects a program that could panic (there is no unwinding in
/// BPF), so a panic path surviving to the object is a load-time error, not a runtime one.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel checks for GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
