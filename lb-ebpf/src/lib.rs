//! What the xvs XDP programs share, one concern per module: packet access and parsing,
//! checksums, the outer-header writer, address translation (and NAT64's translation of headers
//! and of ICMP errors), routing, ICMP, kernel helpers, and the runtime pieces (panic handler,
//! license). None of it declares a map: a map static in this library would be created
//! by every program that links it, so each program's maps live with that program
//! (`src/bin/director/maps.rs`, `src/bin/decap/maps.rs`).
#![no_std]
// Packet words loaded in one instruction whatever their alignment (packet::load_*).
#![feature(asm_experimental_arch)]

pub mod csum;
pub mod encap;
pub mod helpers;
pub mod icmp;
pub mod nat;
pub mod nat64;
pub mod nat64_icmp;
pub mod packet;
pub mod parse;
pub mod route;
pub mod runtime;
