//! Shared pieces of the xvs XDP programs: bounds-checked packet access and header parsing.
#![no_std]

pub mod csum;
pub mod icmp;
pub mod packet;
pub mod tunnel;
